"""The scale of the squared-error signals, as the README's rules table
states it: the reconstruction loss and the `mse` local loss are means over
the batch *and* the features, so their signals carry 1/(N·D) (or 1/(N·C)),
not 1/N.  Checked against numpy (float64) on a tiny batch."""

import numpy as np
import tensorflow as tf

import hparams
import projection
import train

N, D = 3, 4


def sigmoid(a):
    return 1 / (1 + np.exp(-a))


def data():
    rng = np.random.default_rng(0)
    return (rng.uniform(0, 1, (N, D)).astype(np.float32),
            rng.normal(size=(N, D)).astype(np.float32))


def test_reconstruction_error_carries_one_over_n_times_d():
    hp = hparams.make(dataset="digits", problem_type="reconstruction",
                      arch="3", use_xla=False, objective="loss")
    model = train.build_model(hp, (2, 2, 1), D)
    x, z = data()
    z = tf.Variable(z)
    with tf.GradientTape() as tape:
        loss = model.global_loss(tf.constant(x), z)
    e = tape.gradient(loss, z).numpy()
    g = sigmoid(z.numpy().astype(np.float64))
    expected = 2 * (g - x) * g * (1 - g) / (N * D)
    np.testing.assert_allclose(e, expected, rtol=1e-5, atol=1e-9)
    # ... which is 1/D of what a per-example sum of squares over a batch
    # mean (the 1/N convention) would give.
    np.testing.assert_allclose(e * D, 2 * (g - x) * g * (1 - g) / N,
                               rtol=1e-5, atol=1e-9)


def test_mse_local_loss_signal_carries_one_over_n_times_c():
    rule = projection.RULES["mse"](D, output_fn="sigmoid")
    target, p = data()
    p = tf.Variable(p)
    with tf.GradientTape() as tape:
        loss = rule.local_loss(p, None, tf.constant(target))
    dp = tape.gradient(loss, p).numpy()
    g = sigmoid(p.numpy().astype(np.float64))
    np.testing.assert_allclose(dp, 2 * (g - target) * g * (1 - g) / (N * D),
                               rtol=1e-5, atol=1e-9)
