"""The forward-only rules (forward_rules.py): forward gradients are
unbiased estimates of backprop's gradient, at a scale a test can tell
from a wrong one; PEPITA changes nothing in the network's forward pass.
(Each rule's one-step update against numpy is test_rules.py's, with the
directions the step drew.)"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import reference
import reference_forward
from model import ProjectionModel
from test_rules import ARCHS, as_reference, batch, grads_by_layer, make_model

DIRECTIONS = 16_000  # per estimate: 800 steps of --fg_directions=20


def true_gradients(model, x, y):
    with tf.GradientTape() as tape:
        _, z = model.forward(x, training=True)
        loss = model.global_loss(model.target(y), z)
    return tape.gradient(loss, model.forward_variables)


def mean_estimate(model, x, y, calls):
    """The mean of `calls` steps' gradients (each the mean over the
    model's --fg_directions), from one compiled function."""
    @tf.function
    def step():
        return model.compute_gradients(x, y).grads
    total = [np.zeros(v.shape) for v in model.forward_variables]
    for _ in range(calls):
        total = [t + g.numpy() for t, g in zip(total, step())]
    return [t / calls for t in total]


def relative_error(estimate, truth):
    flat = np.concatenate([np.ravel(e) for e in estimate])
    true = np.concatenate([np.ravel(t) for t in truth])
    return np.linalg.norm(flat - true) / np.linalg.norm(true)


@pytest.mark.parametrize("kind", ARCHS)
@pytest.mark.parametrize("rule", ["fg_w", "fg_a"])
def test_forward_gradients_are_unbiased(rule, kind):
    """E[(∇L·v) v] = ∇L (fg_w) and E[(∂L/∂h·u) u] = ∂L/∂h (fg_a, whose
    blocks then get backprop's gradient in expectation).  A per-direction
    estimate's relative error is about √(n + 2) (n: the dimension
    perturbed), so the mean of 16,000 is within 0.15 of the truth at the
    sizes here (about 0.07 for fg_w's 74 weights); 0.8 or 1.25 times the
    right scale is 0.2 off, and fails."""
    arch, shape = ARCHS[kind]
    model = make_model(rule, arch, shape)
    model.spec["fg_directions"] = 20
    x, y = map(tf.constant, batch(shape))
    estimate = mean_estimate(model, x, y, DIRECTIONS // 20)
    truth = [t.numpy() for t in true_gradients(model, x, y)]
    assert relative_error(estimate, truth) < 0.15
    for wrong in (0.8, 1.25):
        assert relative_error([wrong * e for e in estimate], truth) > 0.15


def test_more_directions_estimate_closer():
    """--fg_directions=K averages K directions: the error of one step
    shrinks about as 1/√K."""
    arch, shape = ARCHS["dense"]
    x, y = map(tf.constant, batch(shape))
    errors = {}
    for count in (1, 64):
        model = make_model("fg_w", arch, shape)
        model.spec["fg_directions"] = count
        truth = [t.numpy() for t in true_gradients(model, x, y)]
        errors[count] = np.mean([relative_error(
            [g.numpy() for g in model.compute_gradients(x, y).grads], truth)
            for _ in range(8)])
    assert errors[64] < errors[1] / 4


@pytest.mark.parametrize("kind", ARCHS)
def test_pepita_leaves_the_forward_pass_untouched(kind):
    """Inference is the plain network (no modulation, no F), the same as
    BP's with the same weights, and a training step's first pass is it
    too: its loss is the clean input's."""
    arch, shape = ARCHS[kind]
    pepita, bp = make_model("pepita", arch, shape), make_model("bp", arch,
                                                               shape)
    for p, b in zip(pepita.forward_variables, bp.forward_variables,
                    strict=True):
        p.assign(b)
    x, y = map(tf.constant, batch(shape))
    np.testing.assert_array_equal(pepita(x), bp(x))
    step = pepita.compute_gradients(x, y)
    np.testing.assert_allclose(step.loss, bp.compute_gradients(x, y).loss,
                               rtol=1e-6)
    np.testing.assert_array_equal(pepita(x), bp(x))  # (nothing applied)
    assert [w.name for w in pepita.projections[0].weights] == ["feedback"]
    assert not pepita.projections[0].trainable_weights


def test_pepita_modulator_has_the_papers_scale():
    """F: D × C, U(±0.05·√(6/D)) (GiorgiaD/PEPITA: He-uniform × 0.05)."""
    arch, shape = ARCHS["dense"]
    model = make_model("pepita", arch, shape)
    f = model.projections[0].feedback.numpy()
    d = int(np.prod(shape))
    assert f.shape == (d, 3)
    limit = 0.05 * np.sqrt(6 / d)
    assert np.abs(f).max() <= limit
    assert np.abs(f).max() > 0.8 * limit


def test_pepita_with_dropout_draws_one_mask_for_both_passes():
    """The reference's dropout: one mask per step, the same in the clean and
    the modulated pass, the activations compared after it."""
    keras.utils.set_random_seed(0)
    model = ProjectionModel("5-4", "pepita", 3, "classification", (2, 3, 1),
                            dropout=0.5, seed=0)
    model.build()
    x, y = batch((2, 3, 1))
    dropouts = [d for d in model.dropouts if d is not None]
    start = [d.seed_generator.state.numpy() for d in dropouts]
    masks = [np.asarray(d(tf.ones((len(x), block.spec.units)),
                          training=True), np.float64)
             for d, block in zip(dropouts, model.blocks)]
    for d, state in zip(dropouts, start):
        d.seed_generator.state.assign(state)
    assert all(0 < (m == 0).mean() < 1 for m in masks)  # (drops some)
    step = model.compute_gradients(tf.constant(x), tf.constant(y))
    expected = reference_forward.pepita_dropout_grads(
        as_reference(model), x.astype(np.float64), y,
        np.asarray(model.projections[0].feedback, np.float64), masks)
    actual = grads_by_layer(model, step.grads)
    for key, (dw, db) in expected.items():
        reference.assert_close(actual[key]["W"], dw, f"pepita {key} W")
        reference.assert_close(actual[key]["b"], db, f"pepita {key} b")
    # one draw per step, as any rule's dropout: the generator moved once
    for d, state in zip(dropouts, start):
        assert not np.array_equal(d.seed_generator.state.numpy(), state)
