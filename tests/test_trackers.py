"""Diagnostics (trackers.py): each tracker against numpy worked out by hand
(tests/reference.py), the identities that pin them to 1, their absence when
off, and their TensorBoard tags for every rule, dense and conv."""

import os

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

import cli
import hparams
import projection
import sweep_plan
import reference
import train
import tracker_plots
import trackers
from hparams import ALGORITHMS, TRACKERS
from test_rules import (ARCHS, as_reference, batch, drawn_directions,
                        expected_grads, make_model)


def tracked(model, every=1, names=TRACKERS):
    model.diagnostics = trackers.Trackers(model, names, every)
    return model.diagnostics


def measured(model, x, y):
    """One step's tracker values, measured eagerly."""
    diagnostics = tracked(model)
    model.compute_gradients(tf.constant(x), tf.constant(y))
    return {tag: float(m.result()) for tag, m in diagnostics.by_tag.items()}


def cos(a, b):
    """As trackers.cosine: 0 when either vector is 0."""
    a, b = np.ravel(a), np.ravel(b)
    norms = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / norms) if norms else 0.0


def model_with_random_feedback(rule, arch, shape):
    model = make_model(rule, arch, shape)
    if rule == "fdfa":  # B starts at 0: give it values so cosines can fail
        for p in model.projections:
            p.feedback.assign(np.random.default_rng(3).normal(
                0, 0.3, p.feedback.shape))
    return model


def chained_signals(net, x, y, feedback="W"):
    """The error at every block's output, sent back through each layer's
    `feedback` matrix: "W" gives BP's ∂L/∂h_l, "B" FA/KP's signal."""
    e = reference.error(net.forward(x), y)
    dh = e @ net.output[feedback].T
    signals = [None] * len(net.layers)
    for index in reversed(range(len(net.layers))):
        signals[index] = dh.reshape(net.cache[index]["h"].shape)
        _, _, da = net.block_grads(index, dh)
        if index > 0:
            dh = net.send_back(index, da, net.layers[index][feedback])
    return signals


def expected_values(rule, model, x, y):
    """Every scalar tracker of one step, from the numpy reference."""
    net = as_reference(model)
    x = x.astype(np.float64)
    names = trackers.layer_names(model)
    keys = [*range(len(model.blocks)), "out"]
    true = reference.chained_grads(net, x, y, use_backward_kernel=False)
    signals_bp = chained_signals(net, x, y)
    values = {}
    if projection.RULES[rule].chained:  # bp, fa, kp, usf, brsf, frsf
        rule_grads = reference.chained_grads(
            net, x, y, use_backward_kernel=rule != "bp")
        signals = (signals_bp if rule == "bp"
                   else chained_signals(net, x, y, feedback="B"))
        kernels = [layer["W"] for layer in net.layers] + [net.output["W"]]
        for name, key, w in zip(names, keys, kernels):
            values[f"weight_alignment/{name}"] = (
                1.0 if rule == "bp" else
                cos(w, (net.layers[key] if key != "out" else net.output)["B"]))
    elif rule in ("fg_w", "fg_a", "pepita"):  # no B: no alignment
        rule_grads = expected_grads(rule, model, x, y)
        signals = [np.zeros_like(s) for s in signals_bp]
        if rule == "fg_a":  # δ_l = (∂L/∂h_l · u_l) u_l, by example
            for i, u in enumerate(drawn_directions(rule, model, x, y)):
                along = (signals_bp[i] * u).reshape(len(u), -1).sum(1)
                signals[i] = along.reshape((-1,) + (1,) * (u.ndim - 1)) * u
    elif rule == "shallow":  # the output layer's gradient only
        rule_grads = {k: (np.zeros_like(true[k][0]), None) for k in keys}
        rule_grads["out"] = true["out"]
        signals = [np.zeros_like(s) for s in signals_bp]
    else:
        b = [np.asarray(p.feedback, np.float64) for p in model.projections]
        rule_grads = reference.direct_grads(net, x, y, rule, b)
        e = reference.error(net.forward(x), y)
        signals = [reference.local_signal(rule, b[i], net.cache[i]["h"], e,
                                          y)[0]
                   for i in range(len(net.layers))]
        for i in range(1, len(net.layers)):
            if net.layers[i]["kind"] == "dense":
                values[f"weight_alignment/{names[i]}"] = cos(
                    net.layers[i]["W"], b[i - 1] @ b[i].T)
        values["weight_alignment/output"] = cos(net.output["W"], b[-1])
        if rule == "dfa":  # ℓ_l = Σ (h_l B_l) ⊙ e
            for i, name in enumerate(names[:-1]):
                h = net.cache[i]["h"].reshape(len(x), -1)
                values[f"local_loss/{name}"] = float(np.sum(h @ b[i] * e))
    for name, key in zip(names, keys):
        values[f"bp_cosine/{name}"] = cos(rule_grads[key][0], true[key][0])
        w = (net.layers[key] if key != "out" else net.output)["W"]
        values[f"weight_norm/{name}"] = float(np.linalg.norm(w))
        values[f"update_norm/{name}"] = float(np.linalg.norm(
            rule_grads[key][0]))
    for name, s, t in zip(names, signals, signals_bp):
        values[f"signal_cosine/{name}"] = cos(s, t)
    return values


# --- Values ------------------------------------------------------------------


@pytest.mark.parametrize("kind", ARCHS)
def test_bp_cosines_are_one_at_every_layer(kind):
    arch, shape = ARCHS[kind]
    values = measured(make_model("bp", arch, shape), *batch(shape))
    cosines = {k: v for k, v in values.items()
               if k.split("/")[0] in ("bp_cosine", "signal_cosine",
                                      "weight_alignment")}
    assert len(cosines) == 3 + 2 + 3  # bp (3 layers), signal (2 hidden), W
    for tag, value in cosines.items():
        assert abs(value - 1) < 1e-5, (tag, value)


@pytest.mark.parametrize("kind", ARCHS)
@pytest.mark.parametrize("rule", ALGORITHMS)
def test_every_tracker_matches_hand_computed(rule, kind):
    arch, shape = ARCHS[kind]
    model = model_with_random_feedback(rule, arch, shape)
    x, y = batch(shape)
    expected = expected_values(rule, model, x, y)
    values = measured(model, x, y)
    if rule == "brsf":  # its alignment is with the next batch's draw of B
        for name, layer in zip(trackers.layer_names(model),
                               trackers.linear_layers(model)):
            expected[f"weight_alignment/{name}"] = cos(
                layer.kernel.numpy(), layer.feedback_kernel(peek=True))
    for tag, want in expected.items():
        assert tag in values, tag
        np.testing.assert_allclose(values[tag], want, rtol=1e-4, atol=1e-5,
                                   err_msg=f"{rule} {kind} {tag}")
    if rule in ("fa", "dfa"):  # the test can fail: random B is not BP
        assert values["bp_cosine/block1"] < 0.99


@pytest.mark.parametrize("kind", ARCHS)
def test_fa_with_b_equal_to_w_aligns_perfectly(kind):
    arch, shape = ARCHS[kind]
    model = make_model("fa", arch, shape)
    for layer in trackers.linear_layers(model):
        layer.backward_kernel.assign(layer.kernel)
    values = measured(model, *batch(shape))
    for tag, value in values.items():
        if tag.split("/")[0] in ("bp_cosine", "signal_cosine",
                                 "weight_alignment"):
            assert abs(value - 1) < 1e-5, (tag, value)


def test_signal_cosine_and_local_loss_are_the_steps_own(monkeypatch):
    """The trackers read the teaching signal and local loss the step made
    (Projection.teach), not a recomputation: a rule whose `teach` sends
    the opposite signal and reports another loss is tracked as it
    taught."""
    model = model_with_random_feedback("dfa", "5-4", (2, 3, 1))
    x, y = batch((2, 3, 1))
    plain = measured(model, x, y)
    rule = type(model.projections[0])
    taught = rule.teach

    def opposite(self, h, error, target, tangents=None):
        signal, loss, feedback = taught(self, h, error, target, tangents)
        return -signal, loss + 1.0, feedback
    monkeypatch.setattr(rule, "teach", opposite)
    model = model_with_random_feedback("dfa", "5-4", (2, 3, 1))
    turned = measured(model, x, y)
    for block in ("block1", "block2"):
        assert turned[f"signal_cosine/{block}"] == pytest.approx(
            -plain[f"signal_cosine/{block}"], abs=1e-6)
        assert turned[f"local_loss/{block}"] == pytest.approx(
            plain[f"local_loss/{block}"] + 1.0, abs=1e-6)
    assert abs(plain["signal_cosine/block1"]) > 0.05  # (could fail)


def test_dfa_with_b_equal_to_output_weights_aligns_perfectly():
    """One hidden layer: e B₁ᵀ is BP's e W_oᵀ when B₁ = W_o."""
    model = make_model("dfa", "6")
    model.projections[0].feedback.assign(model.output_layer.kernel)
    values = measured(model, *batch((2, 3, 1)))
    for tag in ("signal_cosine/block1", "bp_cosine/block1",
                "bp_cosine/output", "weight_alignment/output"):
        assert abs(values[tag] - 1) < 1e-5, (tag, values[tag])


def test_compiled_step_measures_one_step_in_k_and_bp_stays_one():
    """Under XLA, with several steps per call: the tf.cond measures one
    step in 3 (12, 15, 18 of the second epoch's 10..19), and bp's
    cosines are 1 on every one."""
    model = make_model("bp")
    model.compile(keras.optimizers.Adam(1e-2), jit_compile=True,
                  steps_per_execution=4)
    diagnostics = tracked(model, every=3)
    x, y = batch((2, 3, 1), n=6 * 10)
    history = model.fit(x, y, batch_size=6, epochs=2, verbose=0)
    assert float(diagnostics.by_tag["bp_cosine/block1"].count) == 3
    cosines = [t for t in history.history
               if t.startswith(("bp_cosine/", "signal_cosine/"))]
    assert len(cosines) == 5
    for tag in cosines:
        np.testing.assert_allclose(history.history[tag], 1, atol=1e-5,
                                   err_msg=tag)


# --- Off means off -----------------------------------------------------------


def traced_ops(model, shape):
    model.compile(keras.optimizers.SGD(0.1), jit_compile=False)
    x, y = batch(shape)
    graph = tf.function(model.train_step).get_concrete_function(
        (tf.TensorSpec((None, *shape)), tf.TensorSpec((None, 3)))).graph
    graph_def = graph.as_graph_def()
    ops = [node.name for node in graph_def.node]
    for function in graph_def.library.function:  # cond branches
        ops += [f"{function.signature.name}/{node.name}"
                for node in function.node_def]
    return ops


@pytest.mark.parametrize("rule", ["fa"])
def test_trackers_off_add_no_op_and_no_metric(rule):
    off = make_model(rule)
    trackers.attach(off, hparams.defaults())
    assert off.diagnostics is None
    assert [m.name for m in off.metrics] == ["loss", "accuracy",
                                             "error_rate"]
    off_ops = traced_ops(off, (2, 3, 1))
    assert not [op for op in off_ops if "trackers" in op]
    on = make_model(rule)
    trackers.attach(on, hparams.make(tracker="all", tracker_every=5))
    on_ops = traced_ops(on, (2, 3, 1))
    assert [op for op in on_ops if "trackers" in op]
    assert len(on_ops) > len(off_ops)


# --- Command line ------------------------------------------------------------


def test_tracker_flag_repeats_and_joins_into_one_pinned_value():
    flag_values = cli.make_flags({})
    flag_values(["prog", "--tracker=norms", "--tracker",
                 "bp_cosine,local_loss"])
    given = cli.given_on_command_line(flag_values)
    assert given["tracker"] == ("bp_cosine,norms,local_loss",)
    assert sweep_plan.search_space({})["tracker"] == ("",)  # never a grid
    assert trackers.parse("all") == TRACKERS
    assert trackers.parse("") == ()


@pytest.mark.parametrize("args, expected", [
    (["--tracker=bp_cosine", "--tracker=alignment"],
     "unknown tracker 'alignment' (valid: bp_cosine, signal_cosine"),
    (["--tracker_every=0"], "must be positive"),
    (["--histogram_freq=-1"], "must be positive"),
])
def test_bad_tracker_settings_are_one_line(args, expected, tmp_path, capsys):
    out = tmp_path / "out"
    status = cli.run(["train.py", *args, f"--workdir={out}"], train.main,
                     train.FLAGS)
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert expected in err[0]
    assert not out.exists()


# --- TensorBoard -------------------------------------------------------------


def event_tags(folder):
    tags = set()
    for name in os.listdir(folder):
        for record in tf.data.TFRecordDataset(os.path.join(folder, name)):
            event = tf.compat.v1.Event.FromString(record.numpy())
            tags.update(value.tag for value in event.summary.value)
    return tags


def expected_tags(rule, kind):
    """What each tracker must log, for the 2-block archs of TB_ARCHS."""
    hidden, layers = ["block1", "block2"], ["block1", "block2", "output"]
    train_tags = {f"bp_cosine/{n}" for n in layers}
    train_tags |= {f"signal_cosine/{n}" for n in hidden}
    train_tags |= {f"{k}/{n}" for k in ("weight_norm", "update_norm")
                   for n in layers}
    train_tags |= {f"activations/{n}" for n in hidden}
    if projection.RULES[rule].chained:
        aligned = layers
    elif not (projection.RULES[rule].direct
              and projection.RULES[rule].projects):  # no B to align
        aligned = []
    else:  # no B_0; a direct rule's conv block 2 has no dense counterpart
        aligned = ["block2", "output"] if kind == "dense" else ["output"]
    train_tags |= {f"weight_alignment/{n}" for n in aligned}
    val_tags = set()
    if projection.RULES[rule].direct and projection.RULES[rule].projects:
        local = {f"local_loss/{n}" for n in hidden}
        train_tags |= local
        val_tags |= local
    return train_tags, val_tags


TB_ARCHS = {"dense": "12-10", "conv": "2C3-P2-3C3-P2"}


def check_logs(workdir, rule, kind):
    """The tags of every tracker, each layer, in TensorBoard and history."""
    train_tags, val_tags = expected_tags(rule, kind)
    logdir = workdir / "tensorboard"
    found_train = event_tags(logdir / "train")
    found_val = event_tags(logdir / "validation")
    assert train_tags <= found_train, sorted(train_tags - found_train)
    assert val_tags <= found_val, sorted(val_tags - found_val)
    assert not [t for t in found_train | found_val
                if t.startswith(("epoch_", "evaluation_"))
                and "/" in t], "tracker tags logged twice"
    history = pd.read_csv(workdir / "history.csv")
    scalars = {t for t in train_tags if not t.startswith("activations/")}
    assert scalars <= set(history.columns)
    assert {f"val_{t}" for t in val_tags} <= set(history.columns)
    assert history[sorted(scalars)].notna().all().all()


@pytest.mark.parametrize("kind", TB_ARCHS)
@pytest.mark.parametrize("rule", ALGORITHMS)
def test_every_tracker_reaches_tensorboard_and_history(rule, kind, tmp_path):
    """Every rule, dense and conv, with every tracker on (run eagerly: the
    compiled step is covered above and by the run through train.py)."""
    hp = hparams.make(algorithm=rule, arch=TB_ARCHS[kind], tracker="all",
                      tracker_every=2)
    shape, n = (8, 8, 1), 10  # one training step, measured
    model = train.build_model(hp, shape, 10, steps_per_epoch=1)
    model.run_eagerly = True
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, *shape)).astype("float32")
    y = np.eye(10, dtype="float32")[rng.integers(0, 10, n)]
    sample = tf.data.Dataset.from_tensor_slices((x, y)).batch(10)
    model.fit(x, y, batch_size=10, epochs=1, validation_data=(x, y),
              verbose=0, callbacks=[
                  keras.callbacks.CSVLogger(str(tmp_path / "history.csv")),
                  trackers.TensorBoard(str(tmp_path / "tensorboard"),
                                       sample=sample, write_graph=False)])
    check_logs(tmp_path, rule, kind)


@pytest.mark.slow
def test_train_py_logs_trackers_of_a_compiled_run(tmp_path):
    hp = hparams.make(dataset="digits", algorithm="dkp",
                      arch=TB_ARCHS["dense"], epochs=1, examples_frac=0.12,
                      use_xla=False, tracker="all", tracker_every=2)
    train.train_and_evaluate(hp, str(tmp_path), verbose=0)
    check_logs(tmp_path, "dkp", "dense")


def test_plot_alignment_draws_one_line_per_rule(tmp_path):
    epochs = np.arange(3)
    frames = {
        "dfa": [pd.DataFrame({"epoch": epochs,
                              "bp_cosine/block1": [0.1, 0.2, 0.3],
                              "bp_cosine/output": [1.0, 1.0, 1.0],
                              "weight_alignment/output": [0, 0.1, 0.2]})
                for _ in range(2)],
        "fa": pd.DataFrame({"epoch": epochs,
                            "bp_cosine/block1": [0.0, 0.4, 0.5]}),
        "bp_no_trackers": pd.DataFrame({"epoch": epochs, "loss": [1, 2, 3]}),
    }
    path = tracker_plots.plot_alignment(frames, str(tmp_path / "a.png"))
    assert path and os.path.getsize(path) > 1000
    np.testing.assert_allclose(
        tracker_plots.layer_mean(frames["dfa"][0], "bp_cosine"), [0.1, 0.2, 0.3])
    assert tracker_plots.plot_alignment({"x": frames["bp_no_trackers"]},
                                   str(tmp_path / "b.png")) is None
