"""Learned feedback (KP, DKP, FDFA) and save/reload, for every rule."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import reference
from hparams import ALGORITHMS
from test_rules import ARCHS, batch, make_model
import train
import hparams


def test_dkp_feedback_update_is_h_transpose_e():
    model = make_model("dkp")
    fb_lr = 0.3
    model.compile(keras.optimizers.SGD(0.1),
                  feedback_optimizer=keras.optimizers.SGD(fb_lr),
                  jit_compile=False)
    x, y = batch((2, 3, 1))
    before = [p.feedback.numpy() for p in model.projections]
    net = reference.Net([dict(kind="dense", W=b.layer.kernel.numpy()
                              .astype(float), b=b.layer.bias.numpy()
                              .astype(float)) for b in model.blocks],
                        dict(W=model.output_layer.kernel.numpy().astype(
                            float), b=model.output_layer.bias.numpy()))
    e = reference.error(net.forward(x.astype(float)), y)
    model.train_on_batch(x, y)
    for l, (b0, proj) in enumerate(zip(before, model.projections)):
        h = net.cache[l]["h"]
        np.testing.assert_allclose(proj.feedback.numpy(),
                                   b0 - fb_lr * h.T @ e, rtol=1e-4,
                                   atol=1e-6)


def test_fdfa_estimate_converges_to_the_true_jacobian():
    """mean over directions of u ⊗ (Σ_k J_k u_k) → mean_n (∂z/∂h_l)ᵀ."""
    model = make_model("fdfa", "16-12", (4, 2, 1), bw_init="zeros")
    x, y = batch((4, 2, 1), n=64, seed=5)
    x, y = tf.constant(x), tf.constant(y)

    @tf.function
    def estimates():
        probe = model.rule.tangent_probe(model.seed_generator)
        with probe:
            hidden, z = model.forward(x, training=False, probe=probe)
        n = tf.cast(tf.shape(z)[0], tf.float32)
        return [tf.matmul(tf.reshape(u, (64, -1)), d, transpose_a=True) / n
                for u, d in probe.tangents(z)]
    total = None
    draws = 400
    for _ in range(draws):
        est = [e.numpy() for e in estimates()]
        total = est if total is None else [t + e for t, e in zip(total, est)]
    mean_est = [t / draws for t in total]
    # True Jacobians of z with respect to each hidden output, batch-averaged.
    with tf.GradientTape(persistent=True) as tape:
        hidden, z = model.forward(x, training=False)
    for h, est in zip(hidden, mean_est):
        jac = tape.batch_jacobian(z, h)  # (N, C, n_l)
        true = tf.reduce_mean(jac, axis=0).numpy().T
        cosine = (est * true).sum() / np.linalg.norm(est) / np.linalg.norm(
            true)
        assert cosine > 0.99, cosine


def test_fdfa_moves_b_toward_the_estimate():
    """With SGD(β) as feedback optimizer, B ← B − β (B − ĝ): B leaves 0."""
    model = make_model("fdfa", bw_init="zeros")
    model.compile(keras.optimizers.SGD(0.1),
                  feedback_optimizer=keras.optimizers.SGD(0.5),
                  jit_compile=False)
    x, y = batch((2, 3, 1))
    model.train_on_batch(x, y)
    assert all(np.abs(p.feedback.numpy()).sum() > 0
               for p in model.projections)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ARCHS)
@pytest.mark.parametrize("rule", ALGORITHMS)
def test_saved_model_reloads_same_feedback_and_predictions(rule, kind,
                                                           tmp_path):
    arch, shape = ARCHS[kind]
    hp = hparams.make(algorithm=rule, arch=arch, use_xla=False,
                      weight_decay=1e-3, fb_optimizer="adam", fb_lr=0.1)
    model = train.build_model(hp, shape, 3)
    x, y = batch(shape)
    model.train_on_batch(x, y)  # learned B move away from their init
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert len(loaded.weights) == len(model.weights)
    for a, b in zip(model.weights, loaded.weights):
        assert a.name == b.name
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    for opt in ("optimizer", "feedback_optimizer"):
        if getattr(model, opt) is not None:  # state restored, not reset
            assert len(getattr(loaded, opt).variables) == len(
                getattr(model, opt).variables) > 1
            for a, b in zip(getattr(model, opt).variables,
                            getattr(loaded, opt).variables):
                np.testing.assert_array_equal(a.numpy(), b.numpy(),
                                              err_msg=f"{opt} {a.path}")
    np.testing.assert_array_equal(model.predict(x, verbose=0),
                                  loaded.predict(x, verbose=0))
    # Training goes on from the reloaded model, compiled as saved.
    before = loaded.output_layer.kernel.numpy()
    loaded.train_on_batch(x, y)
    assert not np.allclose(before, loaded.output_layer.kernel.numpy())


def test_feedback_matrices_are_seeded():
    a, b = make_model("dfa", seed=3), make_model("dfa", seed=3)
    c = make_model("dfa", seed=4)
    np.testing.assert_array_equal(a.projections[0].feedback.numpy(),
                                  b.projections[0].feedback.numpy())
    assert not np.allclose(a.projections[0].feedback.numpy(),
                           c.projections[0].feedback.numpy())
