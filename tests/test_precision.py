"""--precision: mixed_bfloat16 and mixed_float16 against float32.

One step of every rule, dense and conv (a strided conv, a pool, residual
units with batch norm and both shortcuts), from the same float32 weights:
under mixed_bfloat16 every weight update points where float32's does
(cosine > 0.99); under mixed_float16 the gradients handed to the
optimizer carry the loss scale S (it was applied to what the rule
differentiates) and the update equals float32's within float16's
precision (it was removed), and S cancels exactly: a step at another
power-of-two scale moves every variable by the same bits.  A step whose
gradients overflow moves nothing, in either optimizer, and halves S.
Under float32 every precision cast is the identity: the step has no
16-bit tensor and no cast between floating types (its numbers are checked
against numpy by tests/test_rules.py and tests/test_arch_rules.py).
"""

import collections

import keras
import numpy as np
import pytest
import tensorflow as tf

import hparams
import reference
import train
from hparams import ALGORITHMS

CLASSES = 3
LR = 0.1
ARCHS = {
    "dense": ("5-4", (2, 3, 1)),
    # 13×13 → 3C3s2v: 6 → P2: 3 → R4s2 (1×1 conv shortcut + BN): 2 →
    # R4 (identity shortcut): 2 → dense 4.  The units' convs have no bias:
    # a bias before batch norm has a zero gradient, which no cosine
    # measures.
    "conv": ("3C3s2v-P2-R4s2:bn:nobias-R4:bn:nobias-4", (13, 13, 2)),
}
MIXED = ("mixed_bfloat16", "mixed_float16")
# float16 keeps 11 significant bits (a rounding costs up to 2⁻¹¹ ≈ 4.9e-4)
# and a step rounds at every layer, forward and back; batch norm's γ
# gradient Σ dy·x̂ (x̂ of mean 0) cancels, which magnifies that.  Measured
# on these nets: at most 2.1e-3 dense and 1.0e-2 conv (fdfa's γ).
FLOAT16_TOLERANCE = 2e-2
# PEPITA's hidden updates are differences h − h' of two passes whose
# inputs differ by e Fᵀ (F of scale 0.05), which 16 bits keep less of:
# measured on the dense net, float16 0.036 and 0.068 relative errors,
# bfloat16 cosines 0.979 and 0.965 on one x86 CPU, 0.982 and 0.905 on an
# AMD EPYC (this step runs without XLA: oneDNN's bfloat16 kernels differ
# by CPU).  A wrong precision path gives cosines near 0, not 0.9.
PEPITA_FLOAT16_TOLERANCE, PEPITA_BFLOAT16_COSINE = 0.1, 0.85


def build(rule, kind, precision, **kw):
    arch, shape = ARCHS[kind]
    settings = dict(algorithm=rule, arch=arch, precision=precision,
                    optimizer="sgd", lr=LR, fb_optimizer="sgd", fb_lr=LR,
                    fb_weight_decay=0.0, weight_decay=1e-3,
                    bw_init="glorot_uniform", use_xla=False)
    model = train.build_model(hparams.make(**{**settings, **kw}), shape,
                              CLASSES)
    if rule == "fdfa":  # B starts at 0; give it values so the test can fail
        rng = np.random.default_rng(3)
        for p in model.projections:
            p.feedback.assign(rng.normal(0, 0.3, p.feedback.shape))
    model.build_optimizers()
    return model


def batch(kind, n=6, seed=1):
    x, y = reference.random_batch(ARCHS[kind][1], CLASSES, n, seed)
    return tf.constant(x), tf.constant(y)


def moved(model):
    """What a step may move: forward variables (KP's B included) and the
    learned feedback matrices."""
    return [*model.forward_variables, *model.learned_feedback]


def one_step(model, x, y):
    """The update of every moved variable, and the Step the optimizers
    were handed."""
    seen = []
    apply_step = model.apply_step
    model.apply_step = lambda step: (seen.append(step), apply_step(step))
    before = [v.numpy() for v in moved(model)]
    model.train_step((x, y))
    del model.apply_step
    return [v.numpy() - b for v, b in zip(moved(model), before)], seen[0]


def cosine(a, b):
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    return a @ b / (np.linalg.norm(a) * np.linalg.norm(b))


def relative_error(actual, expected):
    actual, expected = (np.asarray(actual, np.float64),
                        np.asarray(expected, np.float64))
    return np.linalg.norm(actual - expected) / np.linalg.norm(expected)


# fg_a and pepita refuse the conv net's batch norm (test_cli).
CASES = [(rule, kind) for rule in ALGORITHMS for kind in ARCHS
         if not (rule in ("fg_a", "pepita") and kind == "conv")]


@pytest.mark.parametrize("rule,kind", CASES)
def test_one_mixed_precision_step_agrees_with_float32(rule, kind):
    x, y = batch(kind)
    models = {p: build(rule, kind, p) for p in ("float32", *MIXED)}
    for model in models.values():  # the same float32 weights to start
        for a, b in zip(moved(model), moved(models["float32"])):
            np.testing.assert_array_equal(a.numpy(), b.numpy())
    update32, step32 = one_step(models["float32"], x, y)
    names = [v.path for v in moved(models["float32"])]
    assert step32.loss_scale is None

    # mixed_bfloat16: the forward and backward passes in bfloat16.
    update, step = one_step(models["mixed_bfloat16"], x, y)
    assert {h.dtype for h in step.hidden} == {tf.bfloat16}
    assert step.loss_scale is None
    agree = PEPITA_BFLOAT16_COSINE if rule == "pepita" else 0.99
    for name, a, b in zip(names, update, update32):
        assert np.any(b), f"{rule} {kind}: {name} does not move"
        assert cosine(a, b) > agree, (rule, kind, name, cosine(a, b))

    # mixed_float16: S applied to what is differentiated, then removed.
    update, step = one_step(models["mixed_float16"], x, y)
    assert {h.dtype for h in step.hidden} == {tf.float16}
    assert step.z.dtype == step.loss.dtype == tf.float32
    scale = float(step.loss_scale)
    assert scale == 2.0 ** 15  # Keras' initial scale
    tolerance = (PEPITA_FLOAT16_TOLERANCE if rule == "pepita"
                 else FLOAT16_TOLERANCE)
    for name, g, g32 in zip(names, step.grads, step32.grads):
        assert relative_error(np.asarray(g) / scale, g32) < (
            tolerance), f"{rule} {kind}: {name}'s gradient ≠ S·g"
    assert len(step.feedback_grads) == len(step32.feedback_grads)
    for g, g32 in zip(step.feedback_grads, step32.feedback_grads):
        assert relative_error(g, g32) < FLOAT16_TOLERANCE, (
            "feedback gradients: float32, unscaled")
    for name, a, b in zip(names, update, update32):
        assert relative_error(a, b) < tolerance, (
            rule, kind, name, relative_error(a, b))

    # S is applied and removed exactly: × 2ᵏ is exact in floating point
    # short of overflow and underflow, so at S = 2⁸ the optimizer gets
    # gradients 2⁷ times smaller, and moves every variable by the same bits.
    low = build(rule, kind, "mixed_float16")
    low.optimizer.dynamic_scale.assign(2.0 ** 8)
    update_low, step_low = one_step(low, x, y)
    for name, g, g_low in zip(names, step.grads, step_low.grads):
        np.testing.assert_array_equal(np.asarray(g) / 2.0 ** 7, g_low,
                                      err_msg=f"{rule} {kind}: {name}")
    for g, g_low in zip(step.feedback_grads, step_low.feedback_grads):
        np.testing.assert_array_equal(g, g_low)
    for name, a, b in zip(names, update_low, update):
        np.testing.assert_array_equal(a, b, err_msg=f"{rule} {kind}: {name}")


# fg_w forms its gradient in float32 (a forward-mode scalar times its
# direction: no 16-bit backward pass for S to overflow); S is applied
# and removed exactly all the same (the test above).
@pytest.mark.parametrize("rule", [r for r in ALGORITHMS if r != "fg_w"])
def test_an_overflowing_float16_step_moves_nothing_and_halves_the_scale(
        rule):
    model = build(rule, "dense", "mixed_float16")
    scaler = model.optimizer
    assert isinstance(scaler, keras.optimizers.LossScaleOptimizer)
    scaler.dynamic_scale.assign(2.0 ** 40)  # S·δ overflows float16
    scaler.step_counter.assign(7)
    optimizers = [o for o in (scaler, model.feedback_optimizer) if o]
    x, y = batch("dense")
    update, step = one_step(model, x, y)
    assert not all(np.all(np.isfinite(g)) for g in step.grads)
    for variable, change in zip(moved(model), update):
        assert not np.any(change), f"{rule}: {variable.path} moved"
    assert [int(o.iterations) for o in optimizers] == [0] * len(optimizers)
    assert float(scaler.dynamic_scale) == 2.0 ** 39
    assert int(scaler.step_counter) == 0
    # At a scale that fits, the same step moves every variable.
    scaler.dynamic_scale.assign(2.0 ** 10)
    update, _ = one_step(model, x, y)
    assert all(np.any(change) for change in update)
    assert [int(o.iterations) for o in optimizers] == [1] * len(optimizers)
    assert int(scaler.step_counter) == 1


@pytest.mark.parametrize("rule", ["dkp", "fdfa"])
def test_a_non_finite_feedback_gradient_skips_both_optimizers(rule):
    """The forward gradients are finite: LossScaleOptimizer alone would
    apply them."""
    model = build(rule, "dense", "mixed_float16")
    x, y = batch("dense")
    step = model.compute_gradients(x, y)
    assert all(np.all(np.isfinite(g)) for g in step.grads)
    step.feedback_grads[0] = step.feedback_grads[0] * np.inf
    before = [v.numpy() for v in moved(model)]
    model.apply_step(step)
    for variable, value in zip(moved(model), before):
        np.testing.assert_array_equal(variable.numpy(), value,
                                      err_msg=variable.path)
    assert float(model.optimizer.dynamic_scale) == 2.0 ** 14
    assert int(model.feedback_optimizer.iterations) == 0


def test_what_stays_float32_under_mixed_float16():
    """Weights, every feedback matrix (FA/KP's backward kernels, direct
    rules' B), batch norm, both optimizers' state: float32 variables; the
    projection, local loss, δ_l and B's gradient of a direct rule: float32
    from a float16 h_l."""
    for rule in ("kp", "dkp"):
        model = build(rule, "conv", "mixed_float16")
        model.train_step(batch("conv"))
        variables = [*model.variables, *model.optimizer.variables,
                     *(model.feedback_optimizer.variables
                       if model.feedback_optimizer else [])]
        floats = {v.path: v.dtype for v in variables
                  if "float" in str(v.dtype)}
        assert set(floats.values()) == {"float32"}, floats
        assert any("backward_kernel" in p or "feedback" in p for p in floats)
        for block in model.blocks:
            for _, layer in block.linear_layers:
                assert layer.compute_dtype == "float16"
        assert model.output_layer.compute_dtype == "float16"
    h = tf.cast(tf.random.normal((6, 4)), tf.float16)
    error = tf.random.normal((6, CLASSES))
    signal, loss, feedback_grad = model.projections[-1].teach(
        h, error, tf.one_hot([0, 1, 2, 0, 1, 2], CLASSES))
    assert signal.dtype == loss.dtype == feedback_grad.dtype == tf.float32


def graph_nodes(graph_def):
    """Every node of a traced graph, nested functions included."""
    return [*graph_def.node,
            *(node for f in graph_def.library.function
              for node in f.node_def)]


def step_graph_ops(model, shape, step=None):
    """The traced train step (or `step`, without XLA) and its
    {op type: count}."""
    concrete = tf.function(step or model.train_step).get_concrete_function(
        (tf.TensorSpec((6, *shape)), tf.TensorSpec((6, CLASSES))))
    graph_def = concrete.graph.as_graph_def()
    ops = [node.op for node in graph_nodes(graph_def)]
    return graph_def, dict(sorted(collections.Counter(ops).items()))


@pytest.mark.parametrize("rule", ["bp", "fa", "dfa"])
def test_mixed_step_runs_matmuls_and_convolutions_in_16_bits(rule):
    """Forward and backward: every convolution (and, for chained rules,
    every matmul) of the step is bfloat16; a direct rule's float32 matmuls
    are its projections (p = h B, δ = ∂ℓ/∂p Bᵀ), one pair per block."""
    arch, shape = ARCHS["conv"]
    model = build(rule, "conv", "mixed_bfloat16")
    graph_def, _ = step_graph_ops(model, shape)
    nodes = graph_nodes(graph_def)
    by_dtype = collections.defaultdict(collections.Counter)
    for node in nodes:
        if node.op in ("MatMul", "Conv2D", "Conv2DBackpropInput",
                       "Conv2DBackpropFilter"):
            by_dtype[node.op][tf.as_dtype(node.attr["T"].type).name] += 1
    assert set(by_dtype["Conv2D"]) == {"bfloat16"}
    assert set(by_dtype["Conv2DBackpropFilter"]) == {"bfloat16"}
    assert by_dtype["MatMul"]["bfloat16"] >= 2  # forward and dW
    float32_matmuls = by_dtype["MatMul"]["float32"]
    assert float32_matmuls == (0 if rule != "dfa" else 2 * len(model.blocks))


def test_float32_step_is_the_step_without_precision():
    """Under float32 no cast of --precision adds an op (tf.cast returns a
    tensor already of its dtype as it is) and nothing scales the loss:
    the training and test steps, trackers on, hold no 16-bit tensor and no
    cast from one floating type to another.  kp (feedback kernels) and
    fdfa (projections, a learned B, the forward-mode probe) pass through
    every cast that mixed precision adds."""
    shape = ARCHS["conv"][1]
    for rule in ("kp", "fdfa"):
        model = build(rule, "conv", "float32", tracker="all",
                      tracker_every=1)
        assert not isinstance(model.optimizer,
                              keras.optimizers.LossScaleOptimizer)
        assert model.loss_scale() is None
        for step in (model.train_step, model.test_step):
            graph_def, _ = step_graph_ops(model, shape, step)
            assert "DT_BFLOAT16" not in str(graph_def)
            assert "DT_HALF" not in str(graph_def)
            for node in graph_nodes(graph_def):
                if node.op == "Cast":
                    types = [tf.as_dtype(node.attr[t].type)
                             for t in ("SrcT", "DstT")]
                    assert not all(t.is_floating for t in types), (
                        rule, node.name, types)


@pytest.mark.parametrize("precision", MIXED)
def test_mixed_model_reloads_with_its_policy_and_predicts_the_same(
        precision, tmp_path):
    """model.keras, and the resume path (a backup read by load_weights
    into the model a rerun builds): policy, weights, both optimizers'
    state (the loss scale and its growth count) restored."""
    model = build("dkp", "conv", precision)
    x, y = batch("conv")
    model.train_on_batch(x, y)
    if precision == "mixed_float16":  # not the values a new one starts at
        model.optimizer.dynamic_scale.assign(2.0 ** 11)
        model.optimizer.step_counter.assign(5)
    path = str(tmp_path / "model.keras")
    model.save(path)
    resumed = build("dkp", "conv", precision)
    resumed.load_weights(path)  # resume.AtomicBackupAndRestore
    loaded = keras.models.load_model(path)
    for a, b in zip(model.optimizer.variables, resumed.optimizer.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    compute = precision.split("_")[1]
    for block in loaded.blocks:
        for _, layer in block.linear_layers:
            assert layer.compute_dtype == compute
    assert loaded.spec["precision"] == precision
    for a, b in zip(model.weights, loaded.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    assert isinstance(loaded.optimizer, keras.optimizers.LossScaleOptimizer
                      ) == (precision == "mixed_float16")
    for opt in ("optimizer", "feedback_optimizer"):
        for a, b in zip(getattr(model, opt).variables,
                        getattr(loaded, opt).variables):
            np.testing.assert_array_equal(a.numpy(), b.numpy(),
                                          err_msg=f"{opt} {a.path}")
    predicted = model.predict(x, verbose=0)
    assert predicted.dtype == np.float32
    np.testing.assert_array_equal(predicted, loaded.predict(x, verbose=0))


def test_xla_mixed_steps_agree_with_float32():
    """Compiled with XLA: fdfa under mixed_bfloat16 (its forward-mode
    probe in bfloat16) and dkp under mixed_float16 (the loss scale and
    both optimizers inside the compiled step)."""
    for rule, precision, tolerance in (("fdfa", "mixed_bfloat16", 0.03),
                                       ("dkp", "mixed_float16", 5e-3)):
        updates = []
        for p in ("float32", precision):
            model = build(rule, "dense", p, use_xla=True)
            x, y = batch("dense")
            before = [v.numpy() for v in moved(model)]
            model.train_on_batch(x, y)
            updates.append([v.numpy() - b
                            for v, b in zip(moved(model), before)])
        for a, b in zip(updates[1], updates[0]):
            assert cosine(a, b) > 0.99
            assert relative_error(a, b) < tolerance


@pytest.mark.parametrize("rule", ["fa", "dfa"])
def test_trackers_under_mixed_float16_match_float32(rule):
    """Alignment cosines and update norms (S taken out) as in float32."""
    values = {}
    for precision in ("float32", "mixed_float16"):
        model = build(rule, "dense", precision, tracker="all",
                      tracker_every=1)
        model.train_step(batch("dense"))
        values[precision] = {m.name: float(m.result())
                             for m in model.diagnostics.metrics}
    assert values["float32"].keys() == values["mixed_float16"].keys()
    assert any(k.startswith("update_norm/") for k in values["float32"])
    for tag, value in values["float32"].items():
        np.testing.assert_allclose(values["mixed_float16"][tag], value,
                                   rtol=5e-3, atol=1e-4, err_msg=tag)
