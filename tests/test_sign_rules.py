"""Sign-concordant feedback (usf, brsf, frsf): B against its definition
in numpy, the identity with backprop, what is redrawn and what is kept.
(Each rule's one-step update against numpy is test_rules.py's, with B as
the step uses it.)"""

import math

import numpy as np
import pytest
import tensorflow as tf

import hparams
from runtime.errors import UsageError
from test_rules import ARCHS, batch, make_model

SIGN_RULES = ("usf", "brsf", "frsf")


def linear_layers(model):
    return [*(b.layer for b in model.blocks), model.output_layer]


def bound(kernel, bw_init):
    """a of U(−a, a) by hand: dense (in, out), conv (kh, kw, in, out)."""
    shape = kernel.shape
    fan_in = int(np.prod(shape[:-1]))
    fan_out = int(shape[-1] * np.prod(shape[:-2]))
    return (1 / math.sqrt(fan_in) if bw_init == "uniform"
            else math.sqrt(6 / (fan_in + fan_out)))


@pytest.mark.parametrize("bw_init", hparams.SIGN_BW_INITS)
@pytest.mark.parametrize("kind", ARCHS)
def test_usf_is_the_sign_of_w_scaled_by_the_draws_std(kind, bw_init):
    arch, shape = ARCHS[kind]
    model = make_model("usf", arch, shape, bw_init=bw_init)
    for layer in linear_layers(model):
        w = layer.kernel.numpy()
        want = np.sign(w) * bound(w, bw_init) / math.sqrt(3)
        np.testing.assert_allclose(layer.feedback_kernel(), want, rtol=1e-6)
        assert not hasattr(layer, "backward_kernel")  # nothing kept


@pytest.mark.parametrize("kind", ARCHS)
def test_usf_with_w_of_one_magnitude_is_backprop(kind):
    """With every |W| = s (usf's scale), B = s·sign(W) = W: backprop."""
    arch, shape = ARCHS[kind]
    bp, usf = make_model("bp", arch, shape), make_model("usf", arch, shape)
    for b_layer, u_layer in zip(linear_layers(bp), linear_layers(usf)):
        w = u_layer.kernel.numpy()
        s = bound(w, "glorot_uniform") / math.sqrt(3)
        signs = np.where(np.random.default_rng(4).random(w.shape) < 0.5,
                         -1.0, 1.0)
        for layer in (b_layer, u_layer):
            layer.kernel.assign(s * signs)
        u_layer.bias.assign(b_layer.bias)
    x, y = map(tf.constant, batch(shape))
    bp_grads = bp.compute_gradients(x, y).grads
    usf_grads = usf.compute_gradients(x, y).grads
    for g_bp, g_usf in zip(bp_grads, usf_grads, strict=True):
        np.testing.assert_allclose(g_usf, g_bp, rtol=1e-5, atol=1e-7)
    # ... and not in general: the hidden layers' updates differ from BP's
    fresh_bp, fresh_usf = make_model("bp", arch, shape), make_model(
        "usf", arch, shape)
    differ = [not np.allclose(a, b, rtol=1e-3) for a, b in zip(
        fresh_bp.compute_gradients(x, y).grads,
        fresh_usf.compute_gradients(x, y).grads)]
    assert any(differ)


@pytest.mark.parametrize("kind", ARCHS)
def test_usf_with_w_of_unit_magnitude_is_fa_with_b_the_sign_of_w(kind):
    """Every |W| = 1: usf's step is FA's with B = sign(W), scaled by usf's
    s (the standard deviation of the draws; B = s·sign(W) by definition)."""
    arch, shape = ARCHS[kind]
    fa, usf = make_model("fa", arch, shape), make_model("usf", arch, shape)
    for f_layer, u_layer in zip(linear_layers(fa), linear_layers(usf)):
        signs = np.where(np.random.default_rng(5).random(
            u_layer.kernel.shape) < 0.5, -1.0, 1.0)
        s = bound(u_layer.kernel.numpy(), "glorot_uniform") / math.sqrt(3)
        for layer in (f_layer, u_layer):
            layer.kernel.assign(signs)  # |W| = 1
        f_layer.bias.assign(u_layer.bias)
        f_layer.backward_kernel.assign(s * np.sign(signs))
    x, y = map(tf.constant, batch(shape))
    for g_fa, g_usf in zip(fa.compute_gradients(x, y).grads,
                           usf.compute_gradients(x, y).grads, strict=True):
        np.testing.assert_allclose(g_usf, g_fa, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kind", ARCHS)
def test_frsf_keeps_its_magnitudes_and_follows_the_signs_of_w(kind):
    arch, shape = ARCHS[kind]
    model = make_model("frsf", arch, shape, bw_init="glorot_uniform")
    model.compile(optimizer="sgd")
    layers = linear_layers(model)
    r = [layer.backward_kernel.numpy() for layer in layers]
    for layer, drawn in zip(layers, r):
        w = layer.kernel.numpy()
        assert np.abs(drawn).max() <= bound(w, "glorot_uniform")
        assert np.abs(drawn).max() > 0.5 * bound(w, "glorot_uniform")
        assert not layer.backward_kernel.trainable
    x, y = batch(shape)
    for _ in range(3):
        model.train_on_batch(x, y)
    for layer, drawn in zip(layers, r):
        np.testing.assert_array_equal(layer.backward_kernel.numpy(), drawn)
        np.testing.assert_allclose(
            layer.feedback_kernel(),
            np.abs(drawn) * np.sign(layer.kernel.numpy()), rtol=1e-6)


@pytest.mark.parametrize("kind", ARCHS)
def test_brsf_draws_new_magnitudes_every_batch(kind):
    arch, shape = ARCHS[kind]
    model = make_model("brsf", arch, shape, bw_init="uniform")
    layers = linear_layers(model)
    x, y = map(tf.constant, batch(shape))
    seen = []
    for _ in range(3):
        before = [layer.feedback_kernel(peek=True).numpy() for layer in layers]
        again = [layer.feedback_kernel(peek=True).numpy() for layer in layers]
        for a, b in zip(before, again):  # peeking draws nothing
            np.testing.assert_array_equal(a, b)
        model.compute_gradients(x, y)  # a training step's forward pass
        seen.append(before)
        for layer, b in zip(layers, before):
            w = layer.kernel.numpy()
            np.testing.assert_array_equal(np.sign(b), np.sign(w))
            magnitude = np.abs(b)
            assert magnitude.max() <= bound(w, "uniform") * (1 + 1e-6)
            # U(0, a): the mean of |R| near a/2 on the larger kernels
            if w.size >= 20:
                assert abs(magnitude.mean() / bound(w, "uniform") - 0.5) < 0.2
    for first, second in zip(seen, seen[1:]):
        for a, b in zip(first, second):
            assert not np.array_equal(a, b)  # redrawn between batches
    # inference draws nothing either: the next step's B is unchanged
    next_b = [layer.feedback_kernel(peek=True).numpy() for layer in layers]
    model.predict(x, verbose=0)
    for layer, b in zip(layers, next_b):
        np.testing.assert_array_equal(layer.feedback_kernel(peek=True), b)


@pytest.mark.parametrize("rule", SIGN_RULES)
def test_sign_rules_refuse_a_non_uniform_feedback_init(rule):
    """(The command line's one line: test_cli.py.)"""
    with pytest.raises(UsageError, match=f"^--bw_init=he_uniform: {rule} "):
        hparams.make(algorithm=rule, bw_init="he_uniform")
    for bw_init in hparams.SIGN_BW_INITS:
        hparams.make(algorithm=rule, bw_init=bw_init)


@pytest.mark.slow
def test_brsf_killed_after_an_epoch_resumes_bit_identical(tmp_path):
    """Its per-layer draws continue where the backup left them."""
    import os
    import subprocess
    import sys

    import cli
    import train
    from conftest import ROOT
    from runtime import resume
    from test_late_kill import metrics
    flags = ["--dataset=digits", "--arch=2C3-P2-16", "--algorithm=brsf",
             "--epochs=2", "--examples_frac=0.3", "--use_xla=false"]

    def run(workdir):
        assert cli.run(["train.py", *flags, f"--workdir={workdir}"],
                       train.main, train.FLAGS) == 0
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    run(reference)
    died = subprocess.run(
        [sys.executable, os.path.join(ROOT, "train.py"), *flags,
         f"--workdir={killed}"], capture_output=True, text=True, timeout=300,
        env={**os.environ, "BPFREE_KILL_AT": "epoch_end:1"})
    assert died.returncode == -9, died.stderr[-3000:]
    run(killed)
    assert [a["start_epoch"] for a in resume.attempts(str(killed))] == [0, 1]
    assert metrics(killed) == metrics(reference)
    assert (killed / "history.csv").read_text() == (
        reference / "history.csv").read_text()


def test_brsf_magnitudes_are_uniform_and_independent_across_seeds():
    """layers.hashed_uniform: U[0, 1) in mean, spread and histogram,
    the same for a seed, uncorrelated between seeds (consecutive states
    of a seed generator) and between neighbouring elements."""
    import layers
    shape = (1000, 1000)
    u = layers.hashed_uniform(shape, tf.constant([0, 0])).numpy()
    assert abs(u.mean() - 0.5) < 2e-3 and abs(u.std() - 12 ** -0.5) < 2e-3
    # χ² over 64 equal bins (63 degrees of freedom: 63 ± 11 for a uniform
    # law; Philox gives 52–80 on these seeds); 110 is p ≈ 2·10⁻⁴
    counts = np.histogram(u, bins=64, range=(0, 1))[0]
    expected = u.size / 64
    assert ((counts - expected) ** 2 / expected).sum() < 110
    assert u.min() >= 0 and u.max() < 1
    np.testing.assert_array_equal(
        layers.hashed_uniform(shape, tf.constant([0, 0])), u)
    for seed in ([0, 1], [1, 0], [7, 3]):
        other = layers.hashed_uniform(shape, tf.constant(seed)).numpy()
        assert abs(np.corrcoef(u.ravel(), other.ravel())[0, 1]) < 0.01
    flat = u.ravel()
    assert abs(np.corrcoef(flat[:-1], flat[1:])[0, 1]) < 0.01
