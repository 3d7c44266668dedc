"""Token networks (patch embedding, transformer and mixer blocks, heads)
through everything else the framework does (issue 21, point 6): saved and
loaded in a fresh process, resumed bit-identical after SIGKILL, one step
under mixed precision against float32, a step reused by the next trial,
trackers at every feedback point and weight map, --augment, and a
parallel sweep.  The maths of a step is tests/test_token_blocks.py's."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

import cli
import hparams
import train
from conftest import ROOT
from runtime import atomic, resume

# 8×8×1 digits in 2×2 patches: 16 tokens of 8 features (a class token
# makes 17); 2 heads of 4; Mixer token MLP 4 wide, channel MLP 8.
MIXED_NET = "E8p2-T2r2-M4c8-Hf"  # every token flattened into the output
CLS_NET = "E8p2:cls-T2r2-Hc"  # the class token read by the head
RUN = dict(dataset="digits", epochs=1, examples_frac=0.2, use_xla=False,
           objective="loss")


def settings(rule, points="block", arch=MIXED_NET, **kw):
    return hparams.make(**{**RUN, "algorithm": rule, "arch": arch,
                           "feedback_points": points, **kw})


def unnumbered(path):
    """A variable's path without the per-process numbers Keras appends
    (projection_model_3, dense_5, seed_generator_7)."""
    return re.sub(r"_\d+(?=[/_]|$)", "", path)


def every_variable(model):
    return [*model.variables, *model.optimizer.variables,
            *(model.feedback_optimizer.variables
              if model.feedback_optimizer is not None else [])]


# --- 1. Saved and loaded in a fresh process -----------------------------------

LOAD = """
import json, sys
import numpy as np
sys.path.insert(0, {root!r})
import bpfree
model = bpfree.load_model(sys.argv[1])
np.save(sys.argv[3], model.predict(np.load(sys.argv[2]), verbose=0))
variables = [*model.variables, *model.optimizer.variables,
             *(model.feedback_optimizer.variables
               if model.feedback_optimizer is not None else [])]
np.savez(sys.argv[4], *[np.asarray(v) for v in variables])
print(json.dumps([v.path for v in variables]))
"""


def load_in_fresh_process(tmp_path, path, x):
    np.save(tmp_path / "x.npy", x)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "-c", LOAD.format(root=ROOT), path,
         str(tmp_path / "x.npy"), str(tmp_path / "y.npy"),
         str(tmp_path / "v.npz")], cwd=elsewhere, env=env,
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    with np.load(tmp_path / "v.npz") as saved:
        values = [saved[f"arr_{i}"] for i in range(len(saved.files))]
    return (np.load(tmp_path / "y.npy"),
            json.loads(done.stdout.splitlines()[-1]), values)


@pytest.mark.slow
@pytest.mark.parametrize("rule,points,arch,expected", [
    # one B per point: block1, block2 ×3, block3 ×3 (block: one each)
    ("dfa", "sublayer", MIXED_NET, {"feedback": 7, "position": 1,
                                    "head_norm": 2}),
    ("dfa", "block", MIXED_NET, {"feedback": 3, "position": 1}),
    # KP's B in every weight map: patches, qkv, out, fc1, fc2, output
    ("kp", "block", CLS_NET, {"backward_kernel": 6, "class_token": 1,
                              "position": 1, "head_norm": 2}),
])
def test_a_saved_token_net_loads_in_a_fresh_process_exactly(
        rule, points, arch, expected, tmp_path):
    import dataloader
    hp = settings(rule, points, arch, dropout=0.1)
    data = dataloader.load(hp)
    model = train.build_model(hp, data.input_shape, data.target_dim,
                              data.steps_per_epoch)
    data.set_epoch(0)
    model.fit(data.train, epochs=1, verbose=0, shuffle=False)  # (state)
    # Every variable away from what a fresh build with this seed makes
    # (fixed B, position embeddings, seed states): one that is not saved
    # or not restored cannot come back equal.
    rng = np.random.default_rng(5)
    for v in model.variables:
        noise = rng.integers(1, 9, v.shape) if v.dtype.startswith(
            ("int", "uint")) else rng.normal(0, 0.1, v.shape)
        v.assign(np.asarray(v) + noise.astype(v.dtype))
    path = str(tmp_path / "model.keras")
    atomic.save_model(model, path)  # as train.py saves it
    x = next(iter(data.test))[0].numpy()

    predicted, paths, values = load_in_fresh_process(tmp_path, path, x)
    np.testing.assert_array_equal(predicted, model.predict(x, verbose=0))
    mine = every_variable(model)
    assert list(map(unnumbered, paths)) == [unnumbered(v.path) for v in mine]
    for v, loaded in zip(mine, values, strict=True):
        if "seed_generator_state" not in v.path:  # (kept by resume.py's
            np.testing.assert_array_equal(  # state.json, not model.keras)
                loaded, np.asarray(v), err_msg=v.path)
    found = {kind: sum(kind in v.path for v in model.variables)
             for kind in expected}
    assert found == expected  # (what the comparison above covered)


# --- 2. Resumed after SIGKILL, bit-identical ------------------------------------

def resume_flags(rule):
    return ["--dataset=digits", f"--arch={MIXED_NET}", f"--algorithm={rule}",
            "--feedback_points=sublayer", "--epochs=2", "--dropout=0.1",
            "--examples_frac=0.3", "--use_xla=false", "--batch_size=32"]


def train_in_process(rule, workdir):
    assert cli.run(["train.py", *resume_flags(rule), f"--workdir={workdir}"],
                   train.main, train.FLAGS) == 0


def saved_values(workdir):
    import keras
    model = keras.models.load_model(os.path.join(workdir, "model.keras"))
    return [(v.path, np.asarray(v)) for v in model.variables]


@pytest.mark.slow
@pytest.mark.parametrize("rule", ["dfa", "fdfa"])  # fdfa: its probe's seeds
def test_a_token_net_killed_after_an_epoch_resumes_bit_identical(
        rule, tmp_path):
    from test_late_kill import metrics
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    train_in_process(rule, reference)
    env = {**os.environ, "BPFREE_KILL_AT": "epoch_end:1"}
    died = subprocess.run(
        [sys.executable, os.path.join(ROOT, "train.py"), *resume_flags(rule),
         f"--workdir={killed}"], env=env, capture_output=True, text=True,
        timeout=300)
    assert died.returncode == -9, died.stderr[-3000:]
    assert not (killed / "metrics.json").exists()
    train_in_process(rule, killed)  # the rerun: epoch 2 only
    assert [a["start_epoch"] for a in resume.attempts(str(killed))] == [0, 1]
    expected, got = metrics(reference), metrics(killed)
    assert {k: (v, expected.get(k)) for k, v in got.items()
            if v != expected.get(k)} == {}
    assert got.keys() == expected.keys()
    assert (killed / "history.csv").read_text() == (
        reference / "history.csv").read_text()
    for (name, a), (_, b) in zip(saved_values(reference),
                                 saved_values(killed), strict=True):
        np.testing.assert_array_equal(b, a, err_msg=name)


# --- 3. Mixed precision against float32 -----------------------------------------

# A class token and both kinds of block.  The mixer has no biases: token2's
# is constant over the channels, which the LayerNorm after it removes, so
# under a chained rule its true gradient is 0 and no cosine measures it.
PRECISION_NET = ("E8p2:cls-T2r2-M4c8:nobias-Hc", (4, 4, 1))
# The class token starts at 0 (+ position, std 0.02): LayerNorm divides its
# row by a std of 0.006, and the chained rules' error at the embedding
# reaches 19 (bp) and more (fa), so at Keras' first scale, 2¹⁵, their
# first steps overflow (skipped, S halved, as dynamic scaling does; fa's
# first finite one is at 2⁹).  The comparison starts where all fit.
SCALE, LOW_SCALE = 2.0 ** 8, 2.0 ** 5


@pytest.mark.parametrize("rule,points", [("dfa", "sublayer"),
                                         ("dfa", "block"), ("fa", "block"),
                                         ("bp", "block")])
def test_one_mixed_precision_step_of_a_token_net_agrees_with_float32(
        rule, points, monkeypatch):
    import test_precision as tp
    monkeypatch.setitem(tp.ARCHS, "tokens", PRECISION_NET)

    def build(precision, scale=None):
        model = tp.build(rule, "tokens", precision, feedback_points=points)
        if scale is not None:
            model.optimizer.dynamic_scale.assign(scale)
        return model
    x, y = tp.batch("tokens")
    float32 = build("float32")
    names = [v.path for v in tp.moved(float32)]
    update32, step32 = tp.one_step(float32, x, y)

    update, step = tp.one_step(build("mixed_bfloat16"), x, y)
    assert {h.dtype for h in step.hidden} == {tf.bfloat16}
    for name, a, b in zip(names, update, update32, strict=True):
        assert np.any(b), f"{name} does not move"
        assert tp.cosine(a, b) > 0.99, (name, tp.cosine(a, b))

    update, step = tp.one_step(build("mixed_float16", SCALE), x, y)
    assert {h.dtype for h in step.hidden} == {tf.float16}
    for name, g, g32 in zip(names, step.grads, step32.grads):
        assert tp.relative_error(np.asarray(g) / SCALE, g32) < (
            tp.FLOAT16_TOLERANCE), f"{name}'s gradient ≠ S·g"
    for name, a, b in zip(names, update, update32):
        assert tp.relative_error(a, b) < tp.FLOAT16_TOLERANCE, name
    # S cancels exactly: at S/8 the gradients are 8 times smaller, bit for
    # bit, and every variable moves by the same bits.
    update_low, step_low = tp.one_step(build("mixed_float16", LOW_SCALE),
                                       x, y)
    for name, g, g_low in zip(names, step.grads, step_low.grads):
        np.testing.assert_array_equal(np.asarray(g) / (SCALE / LOW_SCALE),
                                      g_low, err_msg=name)
    for name, a, b in zip(names, update_low, update):
        np.testing.assert_array_equal(a, b, err_msg=name)


# --- 4. A compiled step reused by the next trial ------------------------------

@pytest.mark.slow
def test_a_reused_token_step_gives_a_fresh_models_results(tmp_path,
                                                           monkeypatch):
    from test_step_cache import BASE, compare
    compare(tmp_path, dict(BASE, arch=MIXED_NET, batch_norm=False,
                           algorithm="dfa", feedback_points="sublayer"),
            monkeypatch)


# --- 5. Trackers at every point and weight map --------------------------------

LAYERS = ["block1_patches", "block2_qkv", "block2_out", "block2_fc1",
          "block2_fc2", "block3_token1", "block3_token2", "block3_fc1",
          "block3_fc2", "output"]
POINTS = {"block": ["block1", "block2", "block3"],
          "sublayer": ["block1", "block2_attention", "block2_mlp", "block2",
                       "block3_tokens", "block3_mlp", "block3"]}


def expected_tags(rule, points):
    """(training tags, validation tags) of `--tracker=all`.  A direct
    rule's weight_alignment is logged for no layer of a token net: no
    dense block reads a previous point, and a head sits before W_o."""
    tags = {f"{kind}/{n}" for kind in ("bp_cosine", "weight_norm",
                                       "update_norm") for n in LAYERS}
    tags |= {f"signal_cosine/{n}" for n in POINTS[points]}
    if rule == "bp":
        return tags | {f"weight_alignment/{n}" for n in LAYERS}, set()
    local = {f"local_loss/{n}" for n in POINTS[points]}
    return tags | local, local


@pytest.mark.parametrize("rule,points", [("dfa", "sublayer"),
                                         ("dfa", "block"), ("bp", "block")])
def test_trackers_measure_every_point_and_weight_map(rule, points):
    """One step measured eagerly: every tag, and bp's cosines all 1."""
    import test_token_blocks as ttb
    from test_trackers import measured
    model = ttb.make_model(rule, MIXED_NET, (8, 8, 1), points)
    values = measured(model, *ttb.batch((8, 8, 1)))
    assert set(values) == expected_tags(rule, points)[0]
    cosines = {t: v for t, v in values.items() if "cosine" in t
               or t.startswith("weight_alignment/")}
    if rule == "bp":
        for tag, value in cosines.items():
            assert abs(value - 1) < 1e-5, (tag, value)
    else:  # the output (and its head) get L's true gradient under every rule
        assert abs(values["bp_cosine/output"] - 1) < 1e-5
        assert abs(values["signal_cosine/block2_attention"
                          if points == "sublayer" else
                          "signal_cosine/block2"]) < 0.99  # random B


@pytest.mark.slow
@pytest.mark.parametrize("rule,points", [("dfa", "sublayer"),
                                         ("bp", "block")])
def test_a_tracked_token_run_logs_every_tag(rule, points, tmp_path):
    """Through train.py's compiled step: history.csv and TensorBoard."""
    from test_trackers import event_tags
    hp = settings(rule, points, tracker="all", tracker_every=2,
                  objective="val_loss")  # (a validation split)
    train.train_and_evaluate(hp, str(tmp_path), verbose=0)
    train_tags, val_tags = expected_tags(rule, points)
    history = pd.read_csv(tmp_path / "history.csv")
    columns = {*train_tags, *(f"val_{t}" for t in val_tags)}
    assert columns <= set(history.columns), sorted(
        columns - set(history.columns))
    assert history[sorted(columns)].notna().all().all()
    logged = event_tags(tmp_path / "tensorboard" / "train")
    assert train_tags <= logged, sorted(train_tags - logged)
    assert {f"activations/{n}" for n in POINTS[points]} <= logged
    assert val_tags <= event_tags(tmp_path / "tensorboard" / "validation")
    if rule == "bp":
        cosines = [t for t in train_tags if "cosine" in t
                   or t.startswith("weight_alignment/")]
        np.testing.assert_allclose(history[cosines], 1, atol=1e-5)


# --- 6. --augment ---------------------------------------------------------------

@pytest.mark.slow
def test_augment_flip_trains_a_token_net(tmp_path, monkeypatch):
    import augment
    flips = []
    real = augment.random_flip
    monkeypatch.setattr(augment, "random_flip", lambda images, key: (
        flips.append(images.shape), real(images, key))[1])
    metrics = train.train_and_evaluate(
        settings("dfa", "sublayer", augment="flip"), str(tmp_path),
        verbose=0)
    assert flips and flips[0][1:] == (8, 8, 1)  # the pipeline flipped
    assert np.isfinite(metrics["loss"]) and not metrics["diverged"]


# --- 7. A parallel sweep gives the serial results ---------------------------

SWEEP = {"dataset": ("digits",), "algorithm": ("bp", "dfa"),
         "arch": ("E8p2-T2r2-Hf",), "epochs": (1,), "objective": ("loss",),
         "use_xla": (False,), "examples_frac": (0.5,), "lr": (1e-2,),
         "executions_per_trial": (1,)}
COMPARED = ["loss", "accuracy", "test_loss", "test_accuracy"]


def sweep_table(sweep):
    frame = pd.read_csv(os.path.join(sweep, "results.csv"))
    assert len(frame) == 2 and set(frame["status"]) == {"COMPLETED"}
    return frame.sort_values("algorithm").reset_index(drop=True)


def flag_value(value):
    return str(value).lower() if isinstance(value, bool) else str(value)


@pytest.mark.slow
def test_two_workers_sweep_a_token_net_as_the_serial_sweep(tmp_path):
    import tune
    serial = str(tmp_path / "serial")
    tune.run_sweep(SWEEP, serial, verbose=False)
    flags = [f"--{k}={','.join(map(flag_value, v))}"
             for k, v in SWEEP.items()]
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("KERASTUNER", "BPFREE_KILL", "BPFREE_STOP"))}
    parallel = str(tmp_path / "parallel")
    run = subprocess.run([os.path.join(ROOT, "train.bash"), parallel, *flags,
                          "--workers=2"], env=env, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    got, expected = sweep_table(parallel), sweep_table(serial)
    assert got["algorithm"].tolist() == ["bp", "dfa"]
    assert got[COMPARED].equals(expected[COMPARED])  # bit for bit
    workers = {resume.attempts(os.path.join(parallel, "trials", t,
                                            "exec0"))[0]["tuner_id"]
               for t in got["trial_id"]}
    assert workers == {"worker1", "worker2"}  # both ran a trial
