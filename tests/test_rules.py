"""Each rule's one-step update against the update worked out by hand in
numpy (tests/reference.py), dense and conv, plus the identities that tie the
rules to backprop."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import forward_mode
import reference
import reference_forward
from hparams import ALGORITHMS
from model import ProjectionModel
import projection

CLASSES = 3
ARCHS = {
    "dense": ("5-4", (2, 3, 1)),
    "conv": ("2C3-P2-3C3", (4, 4, 1)),
}


def make_model(rule, arch="5-4", input_shape=(2, 3, 1), seed=0,
               bw_init="glorot_uniform"):
    keras.utils.set_random_seed(seed)
    model = ProjectionModel(arch, rule, CLASSES, "classification",
                            input_shape, bw_init=bw_init, seed=seed)
    model.build()
    rng = np.random.default_rng(seed + 7)
    for layer in (*[b.layer for b in model.blocks], model.output_layer):
        layer.bias.assign(rng.normal(0, 0.1, layer.bias.shape))
    return model


def batch(input_shape, n=6, seed=1):
    return reference.random_batch(input_shape, CLASSES, n, seed)


def as_reference(model):
    """The model's weights as a numpy reference network (float64)."""
    def f64(v):
        return np.asarray(v, dtype=np.float64)
    layers = []
    for block in model.blocks:
        layer = block.layer
        pool = block.spec.post
        assert pool is None or pool.token == "P2"  # what reference.Net has
        entry = dict(kind=block.spec.kind, W=f64(layer.kernel),
                     b=f64(layer.bias), pool=pool is not None)
        if hasattr(layer, "feedback_kernel"):  # (brsf: the next step's)
            entry["B"] = f64(layer.feedback_kernel(peek=True))
        layers.append(entry)
    out = model.output_layer
    output = dict(W=f64(out.kernel), b=f64(out.bias))
    if hasattr(out, "feedback_kernel"):
        output["B"] = f64(out.feedback_kernel(peek=True))
    return reference.Net(layers, output)


def grads_by_layer(model, grads):
    """{block index or 'out': {'W', 'b', 'B'?: gradient}} of the layers the
    rule trains."""
    found = {}
    by_id = {id(v): g for v, g in zip(model.forward_variables, grads)}
    for key, layer in [*enumerate(b.layer for b in model.blocks),
                       ("out", model.output_layer)]:
        if id(layer.kernel) not in by_id:  # (shallow: the output alone)
            continue
        found[key] = {"W": by_id[id(layer.kernel)],
                      "b": by_id[id(layer.bias)]}
        if id(getattr(layer, "backward_kernel", None)) in by_id:
            found[key]["B"] = by_id[id(layer.backward_kernel)]
    return found


def drawn_directions(rule, model, x, y):
    """The directions fg_w or fg_a draws in its next step (the seed
    generator's state is put back after drawing)."""
    generator = model.seed_generator
    state = generator.state.numpy()
    if rule == "fg_w":
        drawn = forward_mode.normal_like(model.forward_variables, generator)
    else:
        hidden, _ = model.forward(tf.constant(x))
        drawn = [forward_mode.standard_normal(tf.shape(h), generator)
                 for h in hidden]
    generator.state.assign(state)
    return [np.asarray(d, np.float64) for d in drawn]


def expected_grads(rule, model, x, y):
    net = as_reference(model)
    x = x.astype(np.float64)
    if rule in ("fg_w", "fg_a"):
        rule_grads = getattr(reference_forward, f"{rule}_grads")
        return rule_grads(net, x, y, drawn_directions(rule, model, x, y))
    if rule == "pepita":
        return reference_forward.pepita_grads(
            net, x, y, np.asarray(model.projections[0].feedback, np.float64))
    if rule == "shallow":  # the output layer's true gradient, nothing else
        grads = reference.chained_grads(net, x.astype(np.float64), y,
                                        use_backward_kernel=False)
        return {"out": grads["out"]}
    if projection.RULES[rule].chained:
        return reference.chained_grads(net, x.astype(np.float64), y,
                                       use_backward_kernel=rule != "bp")
    b = [np.asarray(p.feedback, np.float64) for p in model.projections]
    return reference.direct_grads(net, x.astype(np.float64), y, rule, b)


@pytest.mark.parametrize("kind", ARCHS)
@pytest.mark.parametrize("rule", ALGORITHMS)
def test_one_step_gradients_match_hand_computed(rule, kind):
    arch, shape = ARCHS[kind]
    model = make_model(rule, arch, shape)
    if rule == "fdfa":  # B starts at 0; give it values so the test can fail
        for p in model.projections:
            p.feedback.assign(np.random.default_rng(3).normal(
                0, 0.3, p.feedback.shape))
    x, y = batch(shape)
    expected = expected_grads(rule, model, x, y)  # (brsf: B before its draw)
    step = model.compute_gradients(tf.constant(x), tf.constant(y))
    actual = grads_by_layer(model, step.grads)
    assert set(actual) == {k for k in expected if k != "feedback"}
    for key, (dw, db) in ((k, v) for k, v in expected.items()
                          if k != "feedback"):
        what = f"{rule} {kind} layer {key}"
        reference.assert_close(actual[key]["W"], dw, f"{what} W")
        reference.assert_close(actual[key]["b"], db, f"{what} b")
        if rule == "kp":  # B gets exactly W's gradient
            reference.assert_close(actual[key]["B"], dw, f"kp layer {key} B")
    if rule == "dkp":  # ∂ℓ_l/∂B_l = h_lᵀ e
        for got, want in zip(step.feedback_grads, expected["feedback"]):
            reference.assert_close(got, want, "dkp feedback gradient")


def test_every_rule_is_registered_and_documented():
    assert tuple(projection.RULES) == ALGORITHMS
    for rule in projection.RULES.values():
        assert rule.__doc__ and "(" in rule.__doc__.splitlines()[0]


@pytest.mark.parametrize("kind", ARCHS)
def test_fa_with_b_equal_to_w_gives_bp_gradients(kind):
    arch, shape = ARCHS[kind]
    bp, fa = make_model("bp", arch, shape), make_model("fa", arch, shape)
    for b_layer, f_layer in zip([*(b.layer for b in bp.blocks),
                                 bp.output_layer],
                                [*(b.layer for b in fa.blocks),
                                 fa.output_layer]):
        f_layer.kernel.assign(b_layer.kernel)
        f_layer.bias.assign(b_layer.bias)
        f_layer.backward_kernel.assign(b_layer.kernel)
    x, y = map(tf.constant, batch(shape))
    for g_bp, g_fa in zip(bp.compute_gradients(x, y).grads,
                          fa.compute_gradients(x, y).grads):
        np.testing.assert_allclose(g_fa, g_bp, rtol=1e-5, atol=1e-7)


def test_fa_with_random_b_differs_from_bp():
    """The identity above is not vacuous: FA's own B changes the update."""
    bp, fa = make_model("bp"), make_model("fa")
    x, y = map(tf.constant, batch((2, 3, 1)))
    assert not np.allclose(bp.compute_gradients(x, y).grads[0],
                           fa.compute_gradients(x, y).grads[0])


def test_dfa_with_b_equal_to_output_weights_gives_bp():
    """One hidden layer: DFA's e B₁ᵀ is BP's e W_oᵀ when B₁ = W_o."""
    bp, dfa = make_model("bp", "6"), make_model("dfa", "6")
    for src, dst in ((bp.blocks[0].layer, dfa.blocks[0].layer),
                     (bp.output_layer, dfa.output_layer)):
        dst.kernel.assign(src.kernel)
        dst.bias.assign(src.bias)
    dfa.projections[0].feedback.assign(bp.output_layer.kernel)
    x, y = map(tf.constant, batch((2, 3, 1)))
    for g_bp, g_dfa in zip(bp.compute_gradients(x, y).grads,
                           dfa.compute_gradients(x, y).grads):
        np.testing.assert_allclose(g_dfa, g_bp, rtol=1e-5, atol=1e-7)


def test_training_step_applies_the_rule_update():
    """train_step = compute_gradients + SGD: W ← W − η ∂."""
    model = make_model("dfa")
    model.compile(keras.optimizers.SGD(0.5), jit_compile=False)
    x, y = batch((2, 3, 1))
    before = [v.numpy() for v in model.forward_variables]
    grads = model.compute_gradients(tf.constant(x), tf.constant(y)).grads
    model.train_on_batch(x, y)
    for b, g, v in zip(before, grads, model.forward_variables):
        np.testing.assert_allclose(v.numpy(), b - 0.5 * np.array(g),
                                   rtol=1e-5, atol=1e-6)
