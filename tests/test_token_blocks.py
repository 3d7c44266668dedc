"""Token networks (patch embedding, transformer and mixer blocks, heads)
under every rule and both feedback-point placements, one step against
numpy worked out by hand (tests/reference_tokens.py); where a sublayer
signal enters; the `shallow` control; the presets' parameter counts."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import arch as arch_lib
import reference
import reference_tokens as rt
import shapes
from hparams import ALGORITHMS, DIRECT_ALGORITHMS
from model import ProjectionModel
from test_arch_rules import (CLASSES, assert_step_matches_mirror, batch, f64,
                             forward_only_reference, make_model)
from test_rules import drawn_directions

ARCHS = {
    # 2×2 patches of a 4×4 image: 4 tokens of 8 features, 2 heads of 4
    "vit": ("E8p2-T2r2-Hm", (4, 4, 1)),
    # 3×2 patches + the class token: 7 tokens, read by the head
    "vit_cls": ("E8p2:cls-T2r2-Hc", (6, 4, 1)),
    # 6 tokens ≠ 8 features ≠ hidden widths: a transposition slip shows;
    # every token flattened into the output layer (the presets' head)
    "mixer": ("E8p2-M4c8-Hf", (4, 6, 2)),
}
# (pepita trains dense and conv layers alone: refused here, test_cli)
CASES = ([(r, k, "block") for r in ALGORITHMS for k in ARCHS
          if r != "pepita"]
         + [(r, k, "sublayer") for r in DIRECT_ALGORITHMS for k in ARCHS])


class Mirror:
    """The model as a reference_tokens.TokenNet, and which op holds each
    variable."""

    def __init__(self, model):
        self.where = {}  # id(variable) → (op, gradient name)
        self.override = {}  # (fg_w: a scaled direction)
        blocks = [self.block(block.unit) for block in model.blocks]
        head = (rt.Head(model.head_kind, self.norm(model.head_norm))
                if model.head_norm is not None else None)
        self.net = rt.TokenNet(blocks, head,
                               self.linear(model.output_layer),
                               model.blocks[-1].sublayer)

    def held(self, variable, op, name):
        self.where[id(variable)] = (op, name)

    def linear(self, layer, tokens=False):
        bias = f64(layer.bias) if layer.use_bias else None
        # B as the next step uses it (brsf: its draw, not taken yet)
        back = (f64(layer.feedback_kernel(peek=True))
                if hasattr(layer, "feedback_kernel") else None)
        if isinstance(layer, keras.layers.Conv2D):
            op = reference.Conv(f64(layer.kernel), bias, back,
                                layer.strides[0], layer.padding)
        else:
            op = (rt.TokenDense if tokens else reference.Dense)(
                f64(layer.kernel), bias, back)
        self.held(layer.kernel, op, "W")
        if layer.use_bias:
            self.held(layer.bias, op, "b")
        if getattr(layer, "learned", False):
            self.held(layer.backward_kernel, op, "W")  # KP: W's gradient
        return op

    def norm(self, layer):
        # ε is the documented 1e-5 (the reference's), not read from the
        # layer: a model that drifted from it would pass otherwise
        op = rt.LayerNorm(f64(layer.gamma), f64(layer.beta))
        self.held(layer.gamma, op, "gamma")
        self.held(layer.beta, op, "beta")
        return op

    def block(self, unit):
        if hasattr(unit, "patches"):
            cls = unit.class_token
            op = rt.PatchEmbedding(self.linear(unit.patches),
                                   f64(unit.position),
                                   None if cls is None else f64(cls))
            self.held(unit.position, op, "position")
            if cls is not None:
                self.held(cls, op, "class_token")
            return op

        def dense(layer):
            return self.linear(layer, tokens=True)
        norm1 = self.norm(unit.norm1)
        if hasattr(unit, "qkv"):  # a transformer block
            first = rt.transformer(norm1, dense(unit.qkv), unit.heads,
                                   dense(unit.out))
        else:
            first = rt.mixer(norm1, dense(unit.token1), dense(unit.token2))
        return first(self.norm(unit.norm2), dense(unit.fc1),
                     dense(unit.fc2))

    def expected(self, variable):
        if id(variable) in self.override:
            return self.override[id(variable)]
        op, name = self.where[id(variable)]
        return op.grads[name]


def reference_step(model, mirror, x, y, rule):
    """Fills the mirror's gradients; returns ∂ℓ/∂B (direct rules)."""
    x64 = x.astype(np.float64)
    if not model.rule.direct:  # (shallow: backprop's output gradient)
        rt.chained(mirror.net, x64, y,
                   "B" if model.rule.kernel_feedback else "W")
        return None
    return rt.direct(mirror.net, x64, y, rule,
                     [f64(p.feedback) for p in model.projections])


@pytest.mark.parametrize("rule,kind,points", CASES)
def test_one_step_matches_hand_computed(rule, kind, points):
    arch, shape = ARCHS[kind]
    model = make_model(rule, arch, shape, points)
    x, y = batch(shape)
    mirror = Mirror(model)  # (before the step: brsf's B is drawn in it)
    drawn = (drawn_directions(rule, model, x, y)
             if rule in ("fg_w", "fg_a") else None)
    step = model.compute_gradients(tf.constant(x), tf.constant(y))
    if drawn is not None:
        forward_only_reference(rule, model, mirror, step, x, y, drawn,
                               chained=rt.chained, direct=rt.direct)
        feedback = None
    else:
        feedback = reference_step(model, mirror, x, y, rule)
    if rule == "dkp":  # ∂ℓ/∂B = h ᵀ e, one per feedback point
        assert len(step.feedback_grads) == len(feedback)
        for got, want in zip(step.feedback_grads, feedback):
            reference.assert_close(got, want, "dkp feedback gradient")
    assert_step_matches_mirror(model, step, mirror, f"{rule} {kind} {points}")


def test_fa_with_b_equal_to_w_gives_bp_on_a_vit():
    arch, shape = ARCHS["vit_cls"]
    bp, fa = make_model("bp", arch, shape), make_model("fa", arch, shape)
    # (FA's fixed B are not trainable: the same variables, same order)
    for src, dst in zip(bp.forward_variables, fa.forward_variables,
                        strict=True):
        assert src.shape == dst.shape
        dst.assign(src)
    layers = [layer for block in fa.blocks
              for _, layer in block.linear_layers] + [fa.output_layer]
    assert len(layers) == 6  # patches, qkv, out, fc1, fc2, output
    for layer in layers:
        layer.backward_kernel.assign(layer.kernel)  # B := W
    x, y = map(tf.constant, batch(shape))
    g_bp = bp.compute_gradients(x, y).grads
    g_fa = fa.compute_gradients(x, y).grads
    assert len(g_fa) == len(g_bp) == 20
    for a, b, v in zip(g_fa, g_bp, fa.forward_variables):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7,
                                   err_msg=v.path)
    # Not vacuous: with its own B, FA's updates differ from BP's where an
    # error has crossed a B (the patches' kernel: through all of them).
    fresh = make_model("fa", arch, shape).compute_gradients(x, y).grads
    patches = [i for i, v in enumerate(fa.forward_variables)
               if "patches/kernel" in v.path]
    assert len(patches) == 1
    assert not np.allclose(fresh[patches[0]], g_bp[patches[0]])


@pytest.mark.parametrize("kind", ["vit", "mixer"])
def test_a_sublayer_signal_trains_its_own_segment_only(kind):
    """Zero point k's projection: exactly segment k's variables (and no
    other block's) get a zero gradient."""
    arch, shape = ARCHS[kind]
    x, y = map(tf.constant, batch(shape))
    for point in range(3):
        model = make_model("dfa", arch, shape, "sublayer")
        block = model.blocks[1]
        assert len(model.projections) == 4  # the embedding's, then three
        model.projections[1 + point].feedback.assign(
            tf.zeros_like(model.projections[1 + point].feedback))
        grads = dict(zip(map(id, model.forward_variables),
                         model.compute_gradients(x, y).grads))
        silent = {id(v) for v in block.segments()[point]}
        assert silent
        for v in model.forward_variables:
            g = grads[id(v)].numpy()
            if id(v) in silent:
                assert np.all(g == 0), (point, v.path)
            else:
                assert np.any(np.abs(g) > 1e-7), (point, v.path)


@pytest.mark.parametrize("kind", ARCHS)
def test_sublayer_points_are_t1_then_m_then_the_output(kind):
    """hidden = [embedding, t1 = x + mix(LN1 x), m = GELU(fc1 LN2 t1),
    out = t1 + fc2 m], as the reference computes them."""
    arch, shape = ARCHS[kind]
    model = make_model("dfa", arch, shape, "sublayer")
    assert model.blocks[1].tap_names == [
        "block2_" + ("tokens" if kind == "mixer" else "attention"),
        "block2_mlp", "block2"]
    x, _ = batch(shape)
    hidden, _ = model.forward(tf.constant(x))
    mirror = Mirror(model)
    mirror.net.forward(x.astype(np.float64))
    block = mirror.net.blocks[1]
    want = [mirror.net.blocks[0].out, block.t1, block.m, block.out]
    assert len(hidden) == len(want)
    for got, expected, name in zip(hidden, want, ["embed", "t1", "m", "out"]):
        reference.assert_close(got, expected, f"{kind} point {name}")
    # m is wider than the block output: its own projection's rows
    assert model.projections[2].feedback.shape[0] == np.prod(
        block.m.shape[1:])


@pytest.mark.parametrize("arch,shape", [
    ("E8p2-T2r2-Hm", (4, 4, 1)), ("8-6", (4, 4, 1))])
def test_shallow_trains_the_output_layer_only(arch, shape):
    """5 compiled steps: every block weight and the head's LayerNorm stay
    bit-identical, the output layer's kernel moves."""
    model = make_model("shallow", arch, shape)
    model.compile(optimizer=keras.optimizers.SGD(0.1), jit_compile=True)
    frozen = [v for block in model.blocks for v in block.weights] + (
        model.head_norm.weights if model.head_norm is not None else [])
    assert frozen
    before = [v.numpy().copy() for v in frozen]
    kernel = model.output_layer.kernel.numpy().copy()
    x, y = batch(shape, n=8)
    for _ in range(5):
        model.train_on_batch(x, y)
    for v, was in zip(frozen, before):
        np.testing.assert_array_equal(v.numpy(), was, err_msg=v.path)
    assert np.abs(model.output_layer.kernel.numpy() - kernel).max() > 1e-4


@pytest.mark.parametrize("preset,classes,count", [
    # The presets' counts as arch.py's comments give them, both on 16
    # tokens with a flattening head (Hf): 128 features, 4 heads and MLPs
    # of 2·128 (ViT: the output layer reads 2,048 features); 64 features,
    # token MLPs of 64 and channel MLPs of 128 (Mixer: 1,024); six ViT
    # blocks of 128 on 64 tokens, flattened too (8,192 features).
    ("vit_mnist", 10, 426_634),
    ("mixer_mnist", 10, 71_482),
    ("vit_cifar10", 10, 891_530),
])
def test_token_presets_parameter_counts(preset, classes, count):
    spec = arch_lib.PRESETS[preset]
    model = ProjectionModel(spec.arch, "bp", classes, "classification",
                            spec.input_shape)
    model.build()
    built = sum(int(np.prod(v.shape)) for v in model.weights)
    assert built == shapes.parameter_count(shapes.network_ops(
        spec.arch, spec.input_shape, classes)) == count
