"""Every rule through every op of the arch grammar, one step against numpy
worked out by hand (tests/reference.py: OpNet): strided, 'valid' and
padded convolutions, overlapping max and average pools, a pool after the
feedback point, global average pooling and residual units with batch
norm and both shortcuts."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import reference
import reference_forward
from hparams import ALGORITHMS
from loss_scaling import logits32
from model import ProjectionModel
from test_rules import drawn_directions

CLASSES = 3
ARCHS = {
    # 13×13 → 13 → P3s2: 6 (overlapping) → 4C3s2v: 2 → 5C2p1: 3 → A2: 1
    "strided": ("2C3-P3s2-4C3s2v-5C2p1-A2-4", (13, 13, 2)),
    # block 1's feedback point sees 6×6×3; the pool opens block 2
    "pool_after_feedback": ("3C3-P2+4", (6, 6, 1)),
    # a projection shortcut (3 → 4 channels, stride 2), then an identity
    # one, batch norm in both units, global average pooling
    "residual": ("3C3-R4s2:bn-R4:bn-G", (6, 6, 2)),
}


# Initial values that would hide a wrong gradient (zero biases, γ = 1,
# β = 0, a zero class token): moved away from them.
PERTURBED = ("bias", "beta", "gamma", "position", "class_token")


def make_model(rule, arch, shape, points="block", seed=0):
    """The model of a one-step test (also test_token_blocks.py's)."""
    keras.utils.set_random_seed(seed)
    model = ProjectionModel(arch, rule, CLASSES, "classification", shape,
                            bw_init="glorot_uniform", seed=seed,
                            feedback_points=points)
    model.build()
    rng = np.random.default_rng(seed + 7)
    for v in model.weights:  # (shallow: its blocks too, for the reference)
        if v.path.rsplit("/", 1)[-1] in PERTURBED:
            v.assign(v.numpy() + rng.normal(0, 0.1, v.shape))
    if rule == "fdfa":  # B starts at 0; give it values so the test can fail
        for p in model.projections:
            p.feedback.assign(rng.normal(0, 0.3, p.feedback.shape))
    return model


def batch(shape, n=6, seed=1):
    return reference.random_batch(shape, CLASSES, n, seed)


def f64(v):
    return np.asarray(v, dtype=np.float64)


class Mirror:
    """The model as a reference.OpNet, and which op holds each variable."""

    def __init__(self, model):
        self.where = {}  # id(variable) → (op, gradient name)
        self.override = {}
        blocks = [self.block(block) for block in model.blocks]
        self.net = reference.OpNet(blocks, self.linear(model.output_layer))

    def linear(self, layer):
        bias = f64(layer.bias) if layer.use_bias else None
        # B as the next step uses it (brsf: its draw, not taken yet)
        back = (f64(layer.feedback_kernel(peek=True))
                if hasattr(layer, "feedback_kernel") else None)
        if isinstance(layer, keras.layers.Dense):
            op = reference.Dense(f64(layer.kernel), bias, back)
        else:
            op = reference.Conv(f64(layer.kernel), bias, back,
                                layer.strides[0], layer.pad or layer.padding)
        self.where[id(layer.kernel)] = (op, "W")
        if layer.use_bias:
            self.where[id(layer.bias)] = (op, "b")
        if getattr(layer, "learned", False):
            # KP: B gets exactly W's gradient
            self.where[id(layer.backward_kernel)] = (op, "W")
        return op

    def norm(self, layer):
        op = reference.BatchNorm(f64(layer.gamma), f64(layer.beta),
                                 layer.epsilon)
        self.where[id(layer.gamma)] = (op, "gamma")
        self.where[id(layer.beta)] = (op, "beta")
        return op

    def block(self, block):
        spec, ops = block.spec, []
        if spec.pre is not None:
            ops.append(reference.Pool(spec.pre.kind, spec.pre.size,
                                      spec.pre.stride))
        if block.unit is not None:
            unit = block.unit
            main = [self.linear(unit.conv1), self.norm(unit.bn1),
                    reference.Tanh(), self.linear(unit.conv2),
                    self.norm(unit.bn2)]
            shortcut = ([] if unit.shortcut is None else
                        [self.linear(unit.shortcut),
                         self.norm(unit.shortcut_bn)])
            ops.append(reference.Residual(main, shortcut))
        else:
            ops.append(self.linear(block.layer))
            if block.norm is not None:
                ops.append(self.norm(block.norm))
            ops.append(reference.Tanh())
        if spec.post is not None:
            ops.append(reference.Pool(spec.post.kind, spec.post.size,
                                      spec.post.stride))
        return ops

    def expected(self, variable):
        if id(variable) in self.override:  # (fg_w: a scaled direction)
            return self.override[id(variable)]
        op, name = self.where[id(variable)]
        return op.grads[name]


FORWARD_ONLY = ("fg_w", "fg_a", "pepita")
# Refused (hparams.py, test_cli): PEPITA on a residual unit (it trains a
# layer followed by its activation), fg_a with batch norm (which mixes the
# examples it perturbs one by one).
OP_CASES = [(rule, kind) for rule in ALGORITHMS for kind in ARCHS
            if not (rule in ("pepita", "fg_a") and kind == "residual")]


def forward_only_reference(rule, model, mirror, step, x, y, drawn, chained,
                           direct, pepita=None):
    """Fills the mirror with what fg_w, fg_a or pepita should have given
    (also test_token_blocks.py's, with its own chained/direct)."""
    x64 = x.astype(np.float64)
    if rule == "fg_w":  # g = (∇L · v) v, ∇L by the mirror's backprop
        chained(mirror.net, x64, y, "W")
        along = sum(float((mirror.expected(var) * v).sum())
                    for var, v in zip(model.forward_variables, drawn))
        mirror.override = {id(var): along * v for var, v in
                           zip(model.forward_variables, drawn)}
    elif rule == "fg_a":  # δ_l = (∂L/∂h_l · u_l) u_l, then as DFA's
        assert_activity_signals(model, step, x, y, drawn)
        direct(mirror.net, x64, y, rule, None,
               signals=[f64(s) for s in step.signals])
    else:
        pepita(mirror.net, x64, y, f64(model.projections[0].feedback))


def assert_activity_signals(model, step, x, y, drawn):
    """fg_a's δ at every feedback point against (g·u) u per example, g =
    ∂L/∂h by autodiff of the same forward pass."""
    with tf.GradientTape() as tape:
        hidden, z = model.forward(tf.constant(x), training=True)
        loss = model.global_loss(model.target(tf.constant(y)), logits32(z))
    truth = tape.gradient(loss, hidden)
    assert len(step.signals) == len(truth) == len(drawn)
    for signal, g, u in zip(step.signals, truth, drawn):
        along = (f64(g) * u).reshape(len(u), -1).sum(1)
        reference.assert_close(signal, along.reshape(
            (-1,) + (1,) * (u.ndim - 1)) * u, "fg_a signal")


@pytest.mark.parametrize("rule,kind", OP_CASES)
def test_one_step_through_every_op_matches_hand_computed(rule, kind):
    arch, shape = ARCHS[kind]
    model = make_model(rule, arch, shape)
    x, y = batch(shape)
    mirror = Mirror(model)  # (before the step: brsf's B is drawn in it)
    drawn = (drawn_directions(rule, model, x, y)
             if rule in ("fg_w", "fg_a") else None)
    step = model.compute_gradients(tf.constant(x), tf.constant(y))
    x64 = x.astype(np.float64)
    if rule in FORWARD_ONLY:
        forward_only_reference(rule, model, mirror, step, x, y, drawn,
                               chained=reference.opnet_chained,
                               direct=reference.opnet_direct,
                               pepita=reference_forward.opnet_pepita)
    elif not model.rule.direct:  # (shallow: backprop's output gradient)
        reference.opnet_chained(mirror.net, x64, y,
                                "B" if model.rule.kernel_feedback else "W")
    else:
        feedback = reference.opnet_direct(
            mirror.net, x64, y, rule,
            [f64(p.feedback) for p in model.projections])
        if rule == "dkp":  # ∂ℓ_l/∂B_l = h_lᵀ e
            for got, want in zip(step.feedback_grads, feedback):
                reference.assert_close(got, want, "dkp feedback gradient")
    assert_step_matches_mirror(model, step, mirror, f"{rule} {kind}")


def assert_step_matches_mirror(model, step, mirror, what):
    """Each trained variable's gradient against the numpy mirror's (also
    test_token_blocks.py's); shallow trains the output layer alone."""
    trained = (mirror.where if model.rule.trains_hidden else
               model.output_layer.trainable_variables)
    assert len(step.grads) == len(model.forward_variables) == len(trained)
    for variable, grad in zip(model.forward_variables, step.grads):
        reference.assert_close(grad, mirror.expected(variable),
                               f"{what} {variable.path}")


def test_fa_with_b_equal_to_w_gives_bp_on_a_residual_net():
    arch, shape = ARCHS["residual"]
    bp, fa = make_model("bp", arch, shape), make_model("fa", arch, shape)
    copied = 0
    for b_block, f_block in zip(bp.blocks, fa.blocks):
        # W, b, BN's γ, β and statistics, in the same order
        for src, dst in zip(b_block.weights, [
                v for v in f_block.weights if "backward" not in v.path]):
            dst.assign(src)
            copied += 1
        for (_, src), (_, dst) in zip(b_block.linear_layers,
                                      f_block.linear_layers):
            dst.backward_kernel.assign(src.kernel)  # B := W
    for src, dst in ((bp.output_layer.kernel, fa.output_layer.kernel),
                     (bp.output_layer.bias, fa.output_layer.bias),
                     (bp.output_layer.kernel,
                      fa.output_layer.backward_kernel)):
        dst.assign(src)
    assert copied == len(bp.weights) - 2
    x, y = map(tf.constant, batch(shape))
    g_bp = bp.compute_gradients(x, y).grads
    g_fa = fa.compute_gradients(x, y).grads
    assert len(g_fa) == len(g_bp) > 20
    for a, b in zip(g_fa, g_bp):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    # Not vacuous: with its own B, FA's updates differ from BP's.
    fresh = make_model("fa", arch, shape)
    assert not np.allclose(fresh.compute_gradients(x, y).grads[0],
                           make_model("bp", arch, shape).compute_gradients(
                               x, y).grads[0])


def test_the_feedback_point_is_before_a_joined_pool():
    """`3C3-P2+4`: block 1's output is the unpooled 6×6×3 map (its B has
    108 rows); `3C3-P2-4` pools before the feedback point (27 rows)."""
    after = make_model("dfa", "3C3-P2+4", (6, 6, 1))
    before = make_model("dfa", "3C3-P2-4", (6, 6, 1))
    assert after.projections[0].feedback.shape == (108, CLASSES)
    assert before.projections[0].feedback.shape == (27, CLASSES)
    x, _ = batch((6, 6, 1))
    hidden, _ = after.forward(tf.constant(x))
    assert hidden[0].shape == (6, 6, 6, 3)


def test_residual_shortcuts_are_identity_or_projection():
    model = make_model("fa", "3C3-R4s2:bn-R4:bn-R4s2-G", (6, 6, 2))
    units = [b.unit for b in model.blocks[1:]]
    assert [u.shortcut is not None for u in units] == [True, False, True]
    assert units[0].shortcut.kernel.shape == (1, 1, 3, 4)
    assert units[0].shortcut.strides == (2, 2)
    assert units[2].shortcut_bn is None  # :bn not given, --batch_norm off
    # FA: every conv of a unit, the shortcut too, carries its own B
    kernels = [layer.backward_kernel for u in units
               for _, layer in u.linear_layers]
    assert len(kernels) == 8  # 3 + 2 + 3
    assert len({id(k) for k in kernels}) == 8


def test_trackers_name_every_layer_of_a_residual_unit():
    """bp_cosine and norms per layer (the unit's convs and shortcut),
    signal_cosine per block; BP's own signals and gradients have cosine 1
    with BP's, and so have FA's once B = W (true_gradient reaches the
    units' convs)."""
    import trackers
    arch, shape = "3C3-R4s2:bn-P2+5", (6, 6, 2)
    x, y = map(tf.constant, batch(shape))

    def measured(model):
        model.diagnostics = trackers.Trackers(
            model, ("bp_cosine", "signal_cosine", "norms",
                    "weight_alignment"))
        model.compute_gradients(x, y)
        return {t: float(m.result())
                for t, m in model.diagnostics.by_tag.items()}

    bp = measured(make_model("bp", arch, shape))
    layers = ["block1", "block2_conv1", "block2_conv2", "block2_shortcut",
              "block3", "output"]
    assert sorted(t for t in bp if t.startswith("bp_cosine/")) == sorted(
        f"bp_cosine/{n}" for n in layers)
    assert sorted(t for t in bp if t.startswith("signal_cosine/")) == [
        f"signal_cosine/block{i}" for i in (1, 2, 3)]
    assert all(abs(v - 1) < 1e-5 for t, v in bp.items() if "cosine" in t)
    fa = make_model("fa", arch, shape)
    for _, layer in [l for b in fa.blocks for l in b.linear_layers] + [
            (None, fa.output_layer)]:
        layer.backward_kernel.assign(layer.kernel)
    values = measured(fa)
    assert all(abs(values[f"bp_cosine/{n}"] - 1) < 1e-5 for n in layers)
    assert all(abs(values[f"weight_alignment/{n}"] - 1) < 1e-5
               for n in layers)
    dfa = measured(make_model("dfa", arch, shape))
    # block3 opens with a pool: W_3 does not read h_2, so no B_2 B_3ᵀ
    assert [t for t in dfa if t.startswith("weight_alignment/")] == [
        "weight_alignment/output"]


def test_overlapping_max_pool_never_takes_the_reshape():
    """The XLA-friendly reshape is a max over disjoint windows only."""
    from arch_tokens import Pool
    import blocks
    h = tf.constant(np.random.default_rng(0).normal(size=(2, 7, 7, 3)),
                    tf.float32)
    for pool, size, stride in ((Pool("max", 3, 2), 3, 2),
                               (Pool("max", 2, 2), 2, 2)):
        np.testing.assert_array_equal(
            blocks.apply_pool(h, pool, reshape_max=True),
            tf.nn.max_pool2d(h, size, stride, "VALID"))
