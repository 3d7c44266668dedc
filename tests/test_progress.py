"""Progress inside a trial (progress.py): one line per epoch in a log file,
one line redrawn in place on a terminal; estimates from the steps' times;
and the split of a run's time into compiling and training
(resume.CallTimes)."""

import os
import pty
import re
import subprocess
import sys

import pytest

from runtime import progress
from runtime import resume
from conftest import ROOT

HAS_VENV = pytest.mark.skipif(
    not os.path.exists(os.path.join(ROOT, ".venv")),
    reason="train.bash needs the project's .venv")
QUICK = ["--dataset=digits", "--arch=8", "--epochs=3", "--use_xla=false",
         "--batch_norm=false", "--algorithm=dfa"]


def user_env():
    return {k: v for k, v in os.environ.items()
            if k not in ("BPFREE_VERBOSE", "BPFREE_STOP_AT",
                         "BPFREE_KILL_AT")}


@pytest.mark.slow
@HAS_VENV
def test_a_sweep_written_to_a_file_logs_one_line_per_epoch(tmp_path):
    log = tmp_path / "sweep.log"
    with open(log, "w") as out:
        result = subprocess.run(
            [os.path.join(ROOT, "train.bash"), str(tmp_path / "exp"), *QUICK,
             "--lr=1e-2,1e-3"], stdout=out, stderr=subprocess.PIPE,
            text=True, timeout=600, env=user_env())
    assert result.returncode == 0, result.stderr[-3000:]
    lines = log.read_text().splitlines()
    assert "\r" not in log.read_text() and "\033" not in log.read_text()
    for trial in (1, 2):
        mine = [line for line in lines if line.startswith(f"[{trial}/2] ")]
        epochs = [line for line in mine if " epoch " in line]
        assert [re.match(rf"\[{trial}/2\] epoch (\d)/3: loss \d\.\d{{4}}, "
                         r"val_loss \d\.\d{4} · \d+ s", line).group(1)
                for line in epochs] == ["1", "2", "3"], mine
        # What it runs, its epochs, how it ended: nothing in between.
        assert len(mine) == 2 + 3
        assert mine[0].startswith(f"[{trial}/2] lr=")
        assert mine[-1].startswith(f"[{trial}/2] done in ")
    # The first trial's lines estimate the time left, its own and the
    # sweep's (one more trial after it).
    first = [line for line in lines if line.startswith("[1/2] epoch 1/3")]
    assert re.search(r", ~\d+ (s|min \d\d s) left, sweep ~\d+ (s|min \d\d s)"
                     r" left$", first[0]), first


def read_all(fd) -> bytes:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # (EIO: the other side closed)
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.slow
def test_on_a_terminal_the_line_is_redrawn_in_place(tmp_path):
    """Under a pseudo-terminal: the live line (step, loss) is drawn with a
    carriage return and cleared before the trial's last line."""
    main, terminal = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "tune.py"),
         f"--sweep_dir={tmp_path / 'exp'}", *QUICK, "--lr=1e-2"],
        stdout=terminal, stderr=subprocess.PIPE, env=user_env())
    os.close(terminal)
    output = read_all(main).decode()
    os.close(main)
    assert process.wait(timeout=600) == 0, process.stderr.read()[-3000:]
    assert re.search(r"\r\[1/1\] epoch 1/3 step \d+/21 loss \d\.\d{4} · ",
                     output), output
    assert "\033[K" in output
    # No epoch line is left behind in a sweep: one live line per trial,
    # cleared before "done".
    assert output.split("[1/1] done in ")[0].endswith("\r\033[K")
    shown = visible(output)
    assert shown[1] == "[1/1] algorithm=dfa"
    assert shown[2].startswith("[1/1] done in ")


def visible(output: str) -> list[str]:
    """The lines a terminal shows in the end: on each, what was written
    after its last carriage return, less the clearing sequence."""
    lines = output.replace("\r\n", "\n").split("\n")
    return [line.rsplit("\r", 1)[-1].replace("\033[K", "")
            for line in lines if line.strip()]


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_the_time_left_is_the_steps_left_at_the_step_time(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(progress.time, "monotonic", clock)
    progress.run_started("runs/x")
    run = progress.RunProgress(epochs=3, steps=100, in_place=False,
                               keep_epoch_lines=True)
    run.train_begin()
    run.epoch_begin(0)
    clock.now = 5.0
    run.batch_end(7)  # the first call (8 steps): compiles, not timed
    assert run.seconds_left() is None
    clock.now = 6.0
    run.batch_end(15)  # 8 steps in 1 s
    # 84 steps left in this epoch, then 2 epochs of 100 steps: 0.125 s each.
    assert run.seconds_left() == pytest.approx(84 / 8 + 2 * 100 / 8)


def test_a_sweeps_time_left_adds_the_trials_after_this_one(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(progress.time, "monotonic", clock)
    progress.trial_started("[2/5]", done=1, total=5, executions=0,
                           workers=2)
    progress._sweep.finished[:] = [30.0, 50.0]  # two trials done: 40 s
    run = progress.RunProgress(epochs=1, steps=10, in_place=False,
                               keep_epoch_lines=False)
    # 10 s left in this trial, then 3 trials of 40 s on 2 workers.
    assert run.sweep_left(10.0) == pytest.approx(10 + 3 * 40 / 2)


def test_the_interrupt_line_names_the_trial_epoch_and_what_is_kept():
    progress.trial_started("[3/8]", done=2, total=8, executions=0)
    progress.where().epoch, progress.where().epochs = 4, 10
    progress.where().saved = 3
    assert progress.stopped_line(2) == (
        "stopped by Ctrl-C (SIGINT) in trial [3/8], epoch 4/10 (2 of 8 "
        "trials done); rerun the same command to continue: finished trials "
        "are kept and this one resumes from its last finished epoch (3)")
    progress.run_started("runs/dfa")
    assert progress.stopped_line(15) == (
        "stopped by SIGTERM before training began; rerun the same command "
        "to start again")


def test_compile_time_is_the_first_epochs_excess_over_a_steady_call(
        monkeypatch):
    """The first and last call of the first epoch compile (full batches,
    then the smaller last batch), for training and validation alike; the
    other calls are the steady time they are compared with."""
    clock = Clock()
    monkeypatch.setattr(resume.time, "perf_counter", clock)
    times = resume.CallTimes()

    def call(kind, seconds):
        times.begin(0)
        clock.now += seconds
        times.end(kind)
    times.epoch_begin(0)
    for seconds in (5.0, 1.0, 1.2, 3.0):  # compile, steady, steady, compile
        call("train", seconds)
    call("test", 2.5)  # validation's only call: compiles
    times.epoch_begin(1)
    for seconds in (1.1, 0.9, 1.0, 0.6):
        call("train", seconds)
    call("test", 0.5)
    # Steady train call: median of 1.0, 1.2, 1.1, 0.9, 1.0, 0.6 = 1.0.
    assert times.compile_seconds() == pytest.approx(
        (5.0 - 1.0) + (3.0 - 1.0) + (2.5 - 0.5))


def test_nothing_is_counted_as_compiling_without_a_call_to_compare():
    times = resume.CallTimes()
    times.epoch_begin(0)
    times.begin(0)
    times.end("train")
    assert times.compile_seconds() == 0.0
