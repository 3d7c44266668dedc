"""Quiet by default (quiet.py): a sweep through train.bash prints no line
from TensorFlow's C++ logging and, per trial, what it runs, one line per
epoch (written to a file or a pipe: progress.py) and how it ended, before
the final table; trackers stay off the epoch lines; `-v`/BPFREE_VERBOSE=1
brings every detail back (Keras' own epoch lines, trackers included)."""

import os
import re
import subprocess

import pandas as pd
import pytest

import cli
from runtime import quiet
import train
import tune
from conftest import ROOT

# What TensorFlow 2.21 writes on import on a machine without a GPU (and, last,
# what it writes on one with a GPU but a failing driver).
START_UP = """\
WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
I0000 00:00:1795985970.469852    4376 port.cc:153] oneDNN custom operations are on. You may see slightly different numerical results due to floating-point round-off errors from different computation orders. To turn them off, set the environment variable `TF_ENABLE_ONEDNN_OPTS=0`.
I0000 00:00:1795985970.471644    4376 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.
I0000 00:00:1795986026.657288    4830 cpu_feature_guard.cc:227] This TensorFlow binary is optimized to use available CPU instructions in performance-critical operations.
To enable the following instructions: AVX2 AVX512F FMA, in other operations, rebuild TensorFlow with the appropriate compiler flags.
2025-09-17 14:44:05.157831: I external/local_xla/xla/tsl/cuda/cudart_stub.cc:32] Could not find cuda drivers on your machine, GPU will not be used.
E0000 00:00:1795985974.315803    4376 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)
/x/warnings.py:1: UserWarning: a Python warning
"""
# A TensorFlow C++ log line (absl's or TensorFlow's own format).
CPP_LOG = re.compile(r"^[IWEF]\d{4} |^\d{4}-\d\d-\d\d [\d:.]+: [IWEF] ")


def test_start_up_notices_are_dropped_and_anything_else_kept():
    lines = START_UP.splitlines()
    assert quiet.not_noise(lines) == [lines[-1]]
    # With a driver present, a failing cuInit is news: it is kept.
    with_driver = [line for line in lines if "cuda drivers" not in line]
    assert quiet.not_noise(with_driver) == [lines[-2], lines[-1]]


def sweep_output(tmp_path, *flags):
    """A digits sweep through train.bash, in a user's environment (none of
    the test session's settings of TensorFlow's or bpfree's logging)."""
    env = {k: v for k, v in os.environ.items()
           if k not in (quiet.VERBOSE_ENV, "TF_CPP_MIN_LOG_LEVEL")}
    result = subprocess.run(
        [os.path.join(ROOT, "train.bash"), str(tmp_path / "quickstart"),
         "--dataset=digits", "--algorithm=dfa", "--arch=16", "--epochs=2",
         "--use_xla=false", *flags], capture_output=True, text=True, timeout=600, env=env)
    return result, (result.stdout + result.stderr).splitlines()


@pytest.mark.skipif(not os.path.exists(os.path.join(ROOT, ".venv")),
                    reason="train.bash needs the project's .venv")
@pytest.mark.slow
def test_quickstart_sweep_prints_a_line_per_epoch_and_no_tf_noise(
        tmp_path):
    result, lines = sweep_output(tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr == ""
    assert not [line for line in lines if CPP_LOG.match(line)
                or "absl::InitializeLog" in line or "cuInit" in line
                or "oneDNN" in line]
    trials = [(False, 0.001), (False, 0.01), (True, 0.001), (True, 0.01)]
    assert lines[0] == (f"Sweep {tmp_path / 'quickstart'} "
                        f"({lines[0].split('(')[1].split(')')[0]}): "
                        "4 configurations over batch_norm, lr")
    for k, (batch_norm, lr) in enumerate(trials, start=1):
        mine = [line for line in lines if line.startswith(f"[{k}/4] ")]
        assert mine[0] == f"[{k}/4] batch_norm={batch_norm} lr={lr:g}"
        assert [line.split(":")[0] for line in mine[1:3]] == [
            f"[{k}/4] epoch 1/2", f"[{k}/4] epoch 2/2"]
        assert re.fullmatch(rf"\[{k}/4\] done in \d+ s: val_loss \d\.\d{{4}}"
                            r", test_accuracy \d\.\d{4}", mine[3]), mine
        assert len(mine) == 4
    table = lines[1 + 4 * len(trials):]
    assert table[0].split()[:5] == ["trial_id", "execution", "status",
                                    "batch_norm", "lr"]
    assert len(table) == 1 + len(trials) + 1  # header, rows, "Results:"
    assert table[-1].startswith("Results: ")


def test_a_failed_trial_says_why_in_one_line(tmp_path, capsys,
                                            monkeypatch):
    monkeypatch.delenv(quiet.VERBOSE_ENV, raising=False)
    status = cli.run(["tune.py", f"--sweep_dir={tmp_path / 'exp'}",
                      "--dataset=digits", "--arch=16", "--epochs=2",
                      "--algorithm=bp", "--activation=relu",
                      "--optimizer=sgd", "--lr=1e-2,1e10",
                      "--batch_norm=false", "--use_xla=false"], tune.main,
                     tune.FLAGS)
    assert status == 0  # the sweep goes on past it
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert "Traceback" not in captured.out + captured.err
    mine = [line for line in lines if line.startswith("[2/2]")]
    assert mine[0] == "[2/2] lr=1e+10"
    assert mine[1].startswith("[2/2] epoch 1/2: loss nan")
    assert mine[2:] == [
        "[2/2] FAILED: diverged: training loss became nan in epoch 1 "
        "(TerminateOnNaN stopped it)"]
    # Keras' own "Batch 7: Invalid loss, terminating training" is not
    # shown: the FAILED line says it.
    assert not [line for line in lines if "Invalid loss" in line]
    # sweep line, 1 + 2 + 1 of trial 1, 1 + 1 + 1 of trial 2, the table
    # (header, 2 rows), "Results:"
    assert len(lines) == 1 + 4 + 3 + 3 + 1
    # A failed run's metrics are not shown as results: a diverged run's
    # test accuracy (chance) would read as one.
    failed = next(line for line in lines if " FAILED " in line)
    assert "0.1" not in failed.split("FAILED")[1].split("diverged")[0]


def test_verbose_restores_keras_tuner_and_keras_details(tmp_path, capsys,
                                                       monkeypatch):
    monkeypatch.setenv(quiet.VERBOSE_ENV, "1")
    status = cli.run(["tune.py", f"--sweep_dir={tmp_path / 'exp'}",
                      "--dataset=digits", "--arch=8", "--epochs=2",
                      "--lr=1e-2", "--batch_norm=false", "--use_xla=false"],
                     tune.main, tune.FLAGS)
    assert status == 0
    lines = capsys.readouterr().out.splitlines()
    assert "Search: Running Trial #1" in lines
    assert any(re.search(r"\|lr$", line) for line in lines)  # its table
    assert "Epoch 2/2" in lines
    assert "[1/1] algorithm=dfa" in lines
    monkeypatch.delenv(quiet.VERBOSE_ENV)
    import keras_tuner
    keras_tuner.src.config.DEBUG = False  # (as the default run leaves it)


@pytest.mark.slow
def test_trackers_are_not_on_the_epoch_line(tmp_path, capsys, monkeypatch):
    """...but in history.csv; -v puts them back on the line."""
    monkeypatch.delenv(quiet.VERBOSE_ENV, raising=False)
    for verbose in ([], ["-v"]):
        out = tmp_path / f"run{len(verbose)}"
        status = cli.run(["train.py", "--dataset=digits", "--arch=16",
                          "--epochs=2", "--use_xla=false",
                          "--tracker=bp_cosine,norms", "--tracker_every=4",
                          *verbose, f"--workdir={out}"], train.main,
                         train.FLAGS)
        assert status == 0
        epoch_lines = [line for line in capsys.readouterr().out.splitlines()
                       if " - loss: " in line or ": loss " in line]
        assert len(epoch_lines) == 2
        history = pd.read_csv(out / "history.csv")
        assert "bp_cosine/block1" in history and "update_norm/output" in \
            history
        shown = ["bp_cosine/block1" in line for line in epoch_lines]
        assert shown == [bool(verbose)] * 2
        monkeypatch.delenv(quiet.VERBOSE_ENV, raising=False)
