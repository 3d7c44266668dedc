"""What a run is doing while it trains, and where it was when stopped.

    [2/4] epoch 3/10 step 120/844 loss 0.3121 · 12 s, ~28 s left, sweep ~2 min left

On a terminal that line is redrawn in place (a few times a second) and
cleared when the trial ends, so a sweep shows its two lines per trial and
one live line.  Written to a file or a pipe (a log) it becomes one line per
epoch, with the epoch's validation loss, and nothing in between: quiet
output never gets more than one line per epoch.  A single run keeps its
epoch lines on a terminal too.

The estimates are simple and say so (`~`): a trial's time left is the
steps left at the current step time plus the epochs left at the last
epoch's time (its validation included); a sweep's adds the trials left
at the mean time of those this process finished (or this trial's
estimated total), divided among the workers.

`where()` is the position a Ctrl-C or SIGTERM names in its one line (cli.py):
the trial, the epoch running and the last one backed up.

TensorFlow-free: train.py wires `RunProgress.hooks()` into Keras through a
LambdaCallback.
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
import time

REDRAW_SECONDS = 0.25


@dataclasses.dataclass
class Position:
    """Where the process is; read by the line an interrupt prints."""

    label: str = ""  # "[2/4]" in a sweep, the workdir of a single run
    epoch: int = 0  # the epoch running (1-based); 0: training not begun
    epochs: int = 0
    saved: int = 0  # epochs finished and backed up (what a rerun keeps)
    in_sweep: bool = False
    workers: int = 1  # a parallel sweep's chief: how many it stopped
    trials_done: int = 0  # in a sweep: trials finished (or failed)
    trials: int = 0
    training_done: bool = False
    execution: str = ""  # " seed 1": which execution of a trial runs


_position = Position()


def where() -> Position:
    return _position


@dataclasses.dataclass
class SweepClock:
    """A sweep's trials as this process sees them, for its estimates."""

    pending_after: int = 0  # trials left after the one running
    workers: int = 1
    finished: list = dataclasses.field(default_factory=list)  # seconds
    trial_began: float = 0.0
    executions_left: int = 0  # after the one running


_sweep = SweepClock()


def trial_started(label: str, done: int, total: int, executions: int,
                  workers: int = 1) -> None:
    """A sweep's trial begins: `done` of `total` trials are finished."""
    global _position
    _position = Position(label=label, in_sweep=True, trials_done=done,
                         trials=total)
    _sweep.pending_after = max(0, total - done - 1)
    _sweep.workers = max(1, workers)
    _sweep.trial_began = time.monotonic()
    _sweep.executions_left = executions


def execution_started(remaining_after: int, seed: int | None = None) -> None:
    """An execution of the trial begins; `seed` names it on the lines when
    the trial has several."""
    _sweep.executions_left = remaining_after
    _position.execution = f" seed {seed}" if seed is not None else ""


def trial_ended() -> None:
    _sweep.finished.append(time.monotonic() - _sweep.trial_began)
    _position.trials_done += 1
    _position.epoch = 0


def workers_stopped(workers: int, done: int, total: int) -> None:
    """A parallel sweep's chief stopped its workers."""
    global _position
    _position = Position(in_sweep=True, workers=workers, trials_done=done,
                         trials=total)


def run_started(label: str) -> None:
    """A single run (train.py) begins."""
    global _position
    _position = Position(label=label)


_live: list = []  # the RunProgress that may have a line on the terminal


def clear_terminal_line() -> None:
    """Clears a live line (before an interrupt's line is printed)."""
    for run in _live:
        run.clear()


def is_terminal(stream=None) -> bool:
    stream = stream or sys.stdout
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class RunProgress:
    """The progress of one `fit`: call `hooks()` for a LambdaCallback."""

    def __init__(self, epochs: int, steps: int, in_place: bool,
                 keep_epoch_lines: bool, stream=None):
        self.epochs, self.steps = epochs, steps
        self.stream = stream or sys.stdout
        self.in_place = in_place  # redraw one line (a terminal)
        self.keep_epoch_lines = keep_epoch_lines  # on a terminal too
        self.began = self.epoch_began = self.first_call_done = None
        self.step = self.steps_timed = 0
        self.last_epoch_seconds = None
        self.validation_began, self.validation_seconds = None, 0.0
        self.drawn = 0.0  # when the line was last redrawn
        self.shown = False  # a live line is on the terminal

    def hooks(self) -> dict:
        return {"on_train_begin": self.train_begin,
                "on_epoch_begin": self.epoch_begin,
                "on_train_batch_end": self.batch_end,
                "on_test_begin": self.validation_begin,
                "on_test_end": self.validation_end,
                "on_epoch_end": self.epoch_end,
                "on_train_end": self.train_end}

    # --- Keras' hooks -------------------------------------------------------

    def train_begin(self, logs=None):
        self.began = time.monotonic()
        _live[:] = [self]

    def epoch_begin(self, epoch, logs=None):
        self.epoch_began = time.monotonic()
        self.validation_seconds = 0.0
        self.first_call_done = None
        self.step = self.steps_timed = 0
        _position.epoch, _position.epochs = epoch + 1, self.epochs
        _position.saved = epoch  # (its backup: epochs before this one)

    def batch_end(self, batch, logs=None):
        now = time.monotonic()
        if self.first_call_done is None:  # (its time includes compiling)
            self.first_call_done, self.steps_timed = now, batch + 1
        self.step = batch + 1
        if self.in_place and now - self.drawn >= REDRAW_SECONDS:
            self.draw(self.live_line(logs or {}))
            self.drawn = now

    def validation_begin(self, logs=None):
        self.validation_began = time.monotonic()

    def validation_end(self, logs=None):
        if self.validation_began is not None:
            self.validation_seconds = time.monotonic() - self.validation_began

    def epoch_end(self, epoch, logs=None):
        now = time.monotonic()
        if self.last_epoch_seconds is None and self.first_call_done:
            # The attempt's first epoch compiles in its first call and in
            # its validation: scale its other calls up to a whole epoch.
            after = max(1, self.steps - self.steps_timed)
            self.last_epoch_seconds = ((now - self.first_call_done
                                        - self.validation_seconds)
                                       * self.steps / after)
        else:
            self.last_epoch_seconds = now - self.epoch_began
        self.step = self.steps
        line = self.epoch_line(epoch, logs or {})
        if not self.in_place:
            print(line, file=self.stream, flush=True)
        elif self.keep_epoch_lines:
            self.draw(line)
            self.stream.write("\n")
            self.shown = False
        else:
            self.draw(line)

    def train_end(self, logs=None):
        _position.training_done = True
        self.clear()

    # --- The line -----------------------------------------------------------

    def live_line(self, logs) -> str:
        loss = logs.get("loss")
        return (f"{self.prefix()} step {self.step}/{self.steps}"
                + (f" loss {loss:.4f}" if loss is not None else "")
                + self.times())

    def epoch_line(self, epoch, logs) -> str:
        shown = ", ".join(f"{name} {logs[name]:.4f}" for name in (
            "loss", "val_loss") if logs.get(name) is not None)
        return f"{self.prefix()}: {shown}{self.times(epoch_done=True)}"

    def prefix(self) -> str:
        label = (f"{_position.label}{_position.execution} "
                 if _position.label else "")
        return f"{label}epoch {_position.epoch}/{self.epochs}"

    def times(self, epoch_done=False) -> str:
        elapsed = time.monotonic() - (_sweep.trial_began if
                                      _position.in_sweep else self.began)
        left = self.seconds_left(epoch_done)
        text = f" · {duration(elapsed)}"
        if left is None or (epoch_done and _position.epoch == self.epochs
                            and not _sweep.pending_after):
            return text
        text += f", ~{duration(left)} left"
        if _position.in_sweep and _sweep.pending_after:
            text += f", sweep ~{duration(self.sweep_left(left))} left"
        return text

    def step_seconds(self) -> float | None:
        """Seconds per step since the epoch's first call (which compiles)."""
        steps = self.step - self.steps_timed
        if self.first_call_done is None or steps <= 0:
            return None
        return (time.monotonic() - self.first_call_done) / steps

    def seconds_left(self, epoch_done=False) -> float | None:
        """This execution's time left: the epoch's steps left, then the
        epochs left, each at the last epoch's time (or steps × step)."""
        per_step = self.step_seconds()
        epochs_after = self.epochs - _position.epoch
        if epoch_done:
            this_epoch = 0.0
        elif per_step is None:
            return None
        else:
            this_epoch = (self.steps - self.step) * per_step
        per_epoch = self.last_epoch_seconds or (
            self.steps * per_step if per_step else None)
        if per_epoch is None:
            return None
        left = this_epoch + epochs_after * per_epoch
        if _position.in_sweep:  # the trial's executions still to run
            elapsed = time.monotonic() - self.began
            left += _sweep.executions_left * (elapsed + left)
        return left

    def sweep_left(self, trial_left: float) -> float:
        trial = (sum(_sweep.finished) / len(_sweep.finished)
                 if _sweep.finished else
                 time.monotonic() - _sweep.trial_began + trial_left)
        return trial_left + _sweep.pending_after * trial / _sweep.workers

    # --- The terminal -------------------------------------------------------

    def draw(self, line: str) -> None:
        width = shutil.get_terminal_size((100, 20)).columns - 1
        self.stream.write("\r" + line[:max(width, 20)] + "\033[K")
        self.stream.flush()
        self.shown = True

    def clear(self) -> None:
        if self.shown:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self.shown = False


def duration(seconds: float) -> str:
    """'42 s', '3 min 20 s', '2 h 05 min'."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def for_run(epochs: int, steps: int, single_run: bool) -> RunProgress:
    """The progress of a fit: redrawn in place on a terminal, except in a
    worker of a parallel sweep (workers share the terminal)."""
    import launcher
    worker = launcher.is_launched_worker()
    return RunProgress(epochs, steps, in_place=is_terminal() and not worker,
                       keep_epoch_lines=single_run)


# --- The line of an interrupt -------------------------------------------------

SIGNAL_WORDS = {2: "Ctrl-C (SIGINT)", 15: "SIGTERM"}


def stopped_line(signum: int) -> str:
    """Where the process stopped, and what its rerun does."""
    what = SIGNAL_WORDS.get(signum, f"signal {signum}")
    p = _position
    if p.in_sweep:
        done = f"{p.trials_done} of {p.trials} trials done"
        if p.workers > 1:
            return (f"stopped by {what} with its {p.workers} workers "
                    f"({done}); rerun the same command to continue: "
                    "finished trials are kept and the others resume from "
                    "their last finished epoch")
        if p.epoch:
            return (f"stopped by {what} in trial {p.label}, epoch "
                    f"{p.epoch}/{p.epochs} ({done}); rerun the same command "
                    "to continue: finished trials are kept and this one "
                    f"resumes {resumes_from(p.saved)}")
        return (f"stopped by {what} ({done}); rerun the same command to "
                "continue: finished trials are kept")
    if p.training_done:
        return (f"stopped by {what} after training {p.label}; rerun the "
                "same command to finish it")
    if p.epoch:
        return (f"stopped by {what} in epoch {p.epoch}/{p.epochs} of "
                f"{p.label}; rerun the same command to resume "
                f"{resumes_from(p.saved)}")
    return (f"stopped by {what} before training began; rerun the same "
            "command to start again")


def resumes_from(saved: int) -> str:
    return (f"from its last finished epoch ({saved})" if saved
            else "from its start (no epoch had finished)")
