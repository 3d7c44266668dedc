"""A trial that reuses the compiled steps of an earlier trial of the same
graph (step_cache.py) ends with the metrics, history and saved weights a
fresh model would have given it, bit for bit: for every rule (dropout and
batch norm on, so seed generators and moving statistics are part of the
state), under mixed_float16's loss scaling, and after a resumed trial."""

import json
import os

import numpy as np
import pandas as pd
import pytest

import hparams
from runtime import step_cache
import train

# Trains real networks end to end, for long (-m "not slow" leaves it out).
pytestmark = pytest.mark.slow

TRIALS = [dict(seed=0, lr=1e-2, fb_lr=1e-3), dict(seed=3, lr=3e-3, fb_lr=1e-2)]


def run_trials(tmp_path, label, settings, reuse, monkeypatch, before=None,
               trials=TRIALS):
    """Trains `trials` one after another in this process; returns, per
    trial, (metrics without timings, history's metric columns, final
    weights) and the model each trial left kept."""
    monkeypatch.setenv(step_cache.ENV, "on" if reuse else "off")
    step_cache.clear()
    results, models = [], []
    for i, trial in enumerate(trials):
        hp = hparams.make(**{**settings, **trial})
        workdir = str(tmp_path / f"{label}{i}")
        if before is not None:
            before(i)
        metrics = train.train_and_evaluate(hp, workdir, verbose=0)
        metrics.pop("train_seconds")
        metrics.pop("compile_seconds")  # (reuse: nothing to compile)
        history = pd.read_csv(os.path.join(workdir, "history.csv"))
        history = history.drop(columns=[c for c in history.columns
                                        if "seconds" in c or "time" in c])
        import keras
        saved = keras.models.load_model(os.path.join(workdir, "model.keras"))
        results.append((json.dumps(metrics, sort_keys=True), history,
                        [np.asarray(v) for v in saved.variables]))
        models.append(step_cache._kept.get(step_cache.key(hp, data_of(hp))))
    step_cache.clear()
    return results, models


def data_of(hp):
    import dataloader
    return dataloader.load(hp)


def compare(tmp_path, settings, monkeypatch, before=None):
    """The second trial alone on a fresh model, and after the first in the
    same process with reuse on: equal, and run by the first's model."""
    fresh, _ = run_trials(tmp_path, "fresh", settings, False, monkeypatch,
                          trials=TRIALS[1:])
    reused, models = run_trials(tmp_path, "reused", settings, True,
                                monkeypatch, before=before)
    assert models[0] is models[1]  # the second trial ran the first's model
    assert_same(fresh, reused[1:])
    assert reused[0][0] != reused[1][0]  # the seeds and rates did matter


def assert_same(fresh, reused):
    for (m1, h1, w1), (m2, h2, w2) in zip(fresh, reused, strict=True):
        assert m1 == m2
        pd.testing.assert_frame_equal(h1, h2, check_exact=True)
        assert len(w1) == len(w2)
        for a, b in zip(w1, w2):
            np.testing.assert_array_equal(a, b)


# Without XLA: what is copied does not depend on it, and tracing is
# cheaper (the resumed-trial test runs compiled).
BASE = dict(dataset="digits", arch="12-10", epochs=1, batch_size=50,
            dropout=0.1, batch_norm=True, objective="loss", use_xla=False)


# (fg_a and pepita refuse batch norm: without it)
PLAIN = {"fg_a": dict(batch_norm=False), "pepita": dict(batch_norm=False)}


@pytest.mark.parametrize("algorithm", hparams.ALGORITHMS)
def test_reused_steps_give_a_fresh_models_results(tmp_path, monkeypatch,
                                                  algorithm):
    compare(tmp_path, dict(BASE, algorithm=algorithm,
                           optimizer="momentum" if algorithm == "kp"
                           else "adam", **PLAIN.get(algorithm, {})),
            monkeypatch)


def test_reuse_under_mixed_float16_keeps_the_loss_scale_fresh(
        tmp_path, monkeypatch):
    compare(tmp_path, dict(BASE, algorithm="dfa",
                           precision="mixed_float16"), monkeypatch)


def test_a_resumed_trials_start_epoch_does_not_pass_to_the_next(
        tmp_path, monkeypatch):
    """Keras' BackupAndRestore leaves the model's _initial_epoch set after a
    resumed trial; the next trial on that model still starts at epoch 0."""
    def as_if_resumed(i):
        for model in step_cache._kept.values():
            model._initial_epoch = 1
    compare(tmp_path, dict(BASE, algorithm="fdfa", epochs=2, use_xla=True,
                           lr_schedule="cosine"), monkeypatch,
            before=as_if_resumed)


def test_another_graph_is_not_reused(tmp_path, monkeypatch):
    monkeypatch.setenv(step_cache.ENV, "on")
    step_cache.clear()
    first = hparams.make(**dict(BASE, algorithm="dfa"))
    train.train_and_evaluate(first, str(tmp_path / "a"), verbose=0)
    kept = list(step_cache._kept.values())
    for other in (dict(batch_norm=False), dict(arch="12-11"),
                  dict(algorithm="drtp"), dict(epochs=3),
                  dict(tracker="bp_cosine")):
        hp = hparams.make(**{**BASE, "algorithm": "dfa", **other})
        assert step_cache.key(hp, data_of(hp)) != step_cache.key(
            first, data_of(first)) or other.get("tracker")
    hp = hparams.make(**dict(BASE, algorithm="dfa", tracker="bp_cosine"))
    assert step_cache.key(hp, data_of(hp)) is None
    train.train_and_evaluate(hparams.make(**dict(BASE, algorithm="drtp")),
                             str(tmp_path / "b"), verbose=0)
    assert kept[0] in step_cache._kept.values()  # still held, not taken
    step_cache.clear()
