"""Resuming a run after a crash, from its last finished epoch.

`AtomicBackupAndRestore` is Keras' BackupAndRestore with two repairs, and
`EpochOrder` makes the data order a function of the epoch, so that a resumed
run continues exactly as an uninterrupted one would have:

- Keras writes the weights file, then the epoch number, both in place.  A
  kill during the first write leaves an unreadable checkpoint; a kill between
  the two restores epoch k's weights as if they were epoch k−1's.  Here each
  save writes a new weights file, then atomically replaces `state.json`, which
  names it; the older file is removed only after that.
- Keras' weights files hold the weights, feedback matrices and both
  optimizers' state, but not the seed generators' state (dropout, FDFA's
  random directions); `state.json` carries those too.

Each start of a run appends a line to `attempts.jsonl` (the epoch it starts
from), so that a sweep can prove no run was redone from scratch.
"""

from __future__ import annotations

import json
import os
import time

import keras
import numpy as np

from runtime import atomic
from runtime import faults
from runtime.errors import StorageError
from runtime.folders import read_json

STATE = "state.json"
ATTEMPTS = "attempts.jsonl"


def seed_state_variables(model):
    return [v for v in model.variables if "seed_generator_state" in v.path]


class CallTimes:
    """The durations of a fit's compiled calls (each runs
    steps_per_execution batches), to tell compiling from training.

    The calls that compile are the first epoch's first one (its full
    batches) and last one (the epoch's smaller last batch), for training
    and for validation alike: their excess over the median of the other
    calls of their kind is the attempt's compile time.  A step reused
    from an earlier trial (step_cache.py) or loaded from XLA's cache
    compiles little, and its excess is small.  With no other call to
    compare with (one call per epoch, one epoch) nothing is counted."""

    def __init__(self):
        self.calls = {"train": [], "test": []}  # (epoch, seconds)
        self.epoch = self.first_epoch = None
        self.began = None

    def hooks(self) -> dict:
        return {"on_epoch_begin": self.epoch_begin,
                "on_train_batch_begin": self.begin,
                "on_train_batch_end": lambda batch, logs=None: self.end(
                    "train"),
                "on_test_batch_begin": self.begin,
                "on_test_batch_end": lambda batch, logs=None: self.end(
                    "test")}

    def epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        if self.first_epoch is None:
            self.first_epoch = epoch

    def begin(self, batch, logs=None):
        self.began = time.perf_counter()

    def end(self, kind):
        if self.began is not None and self.epoch is not None:
            self.calls[kind].append((self.epoch,
                                     time.perf_counter() - self.began))
        self.began = None

    def compile_seconds(self) -> float:
        total = 0.0
        for calls in self.calls.values():
            first = [k for k, (epoch, _) in enumerate(calls)
                     if epoch == self.first_epoch]
            compiling = set(first[:1] + first[-1:])
            steady = [d for k, (_, d) in enumerate(calls)
                      if k not in compiling]
            if not steady:
                continue
            typical = float(np.median(steady))
            total += sum(max(0.0, calls[k][1] - typical) for k in compiling)
        return total


class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
    """Backs up after every epoch; restores at the start of `fit`.  Keeps
    the run's wall time and compile time (`times`: this attempt's
    CallTimes) over attempts."""

    def __init__(self, backup_dir, times: CallTimes | None = None):
        super().__init__(backup_dir, save_freq="epoch",
                         delete_checkpoint=False)  # the caller removes it
        self.state_path = os.path.join(backup_dir, STATE)
        state = read_json(self.state_path) or {}
        self.before = (state.get("train_seconds", 0.0),
                       state.get("compile_seconds", 0.0))
        self.times = times or CallTimes()
        self.began = time.time()

    def restored_epoch(self) -> int:
        state = read_json(self.state_path)
        return state["epoch"] if state else 0

    def seconds(self) -> tuple[float, float]:
        """(wall time of training, the part of it spent compiling), over
        all attempts (up to the last backup for the earlier ones).  The
        wall time holds the compiles: `train_seconds` is the difference."""
        return (self.before[0] + time.time() - self.began,
                self.before[1] + self.times.compile_seconds())

    def _save_model(self):
        old = read_json(self.state_path)
        # A .keras file (written from memory: atomic.save_model); Keras'
        # load_weights reads it as it reads a .weights.h5.
        name = f"epoch{self._current_epoch}.keras"
        atomic.save_model(self.model, os.path.join(self.backup_dir, name))
        # In model order: their names are numbered per process
        # (seed_generator_7), so a new process would not find them by name.
        seeds = [np.asarray(v.numpy()).tolist()
                 for v in seed_state_variables(self.model)]
        wall, compiling = self.seconds()
        atomic.write_json(self.state_path, {
            "epoch": self._current_epoch, "weights": name,
            "seed_states": seeds, "train_seconds": wall,
            "compile_seconds": compiling})
        if old and old["weights"] != name:
            stale = os.path.join(self.backup_dir, old["weights"])
            if os.path.exists(stale):
                os.remove(stale)
        faults.point("epoch_end")

    def _load_model(self):
        state = read_json(self.state_path)
        if state is None:
            return
        self.model.build_optimizers()
        self.model.load_weights(os.path.join(self.backup_dir,
                                             state["weights"]))
        variables = seed_state_variables(self.model)
        if len(variables) != len(state["seed_states"]):
            raise ValueError(f"{self.state_path} does not match this model "
                             f"({len(state['seed_states'])} seed states, the "
                             f"model has {len(variables)})")
        for variable, value in zip(variables, state["seed_states"]):
            variable.assign(np.asarray(value, dtype=variable.dtype))
        self.model._initial_epoch = state["epoch"]


class StopOnNaN(keras.callbacks.TerminateOnNaN):
    """Keras' TerminateOnNaN without its line ("Batch 7: Invalid loss,
    terminating training"): the run's own line says it diverged, where
    and why (train.final_metrics)."""

    def on_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not np.isfinite(loss):
            self.model.stop_training = True


class EpochOrder(keras.callbacks.Callback):
    """Tells the training pipeline which epoch's order to yield."""

    def __init__(self, data):
        super().__init__()
        self.data = data

    def on_epoch_begin(self, epoch, logs=None):
        self.data.set_epoch(epoch)


class BatchFaultPoint(keras.callbacks.Callback):
    """Passes faults.point("train_batch") after every training batch (only
    added when a kill is armed: tests of a kill mid-epoch)."""

    def on_train_batch_end(self, batch, logs=None):
        faults.point("train_batch")


def log_attempt(workdir: str, start_epoch: int) -> None:
    """One line per start of a run (an append of one short line)."""
    path = os.path.join(workdir, ATTEMPTS)
    try:
        with open(path, "a") as f:
            f.write(json.dumps({
                "start_epoch": start_epoch, "time": round(time.time(), 3),
                "pid": os.getpid(),
                "tuner_id": os.environ.get("KERASTUNER_TUNER_ID")}) + "\n")
    except OSError as error:
        raise StorageError(path, error.strerror or str(error)) from error


def attempts(workdir: str) -> list[dict]:
    path = os.path.join(workdir, ATTEMPTS)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def tidy_history(path: str, seconds: tuple[float, float]):
    """The per-epoch history of all attempts, one row per epoch, with the
    run's (wall, compile) seconds in `attrs["seconds"]`.

    An epoch logged but killed before its backup is trained again on resume
    and logged twice; the later row is the one the run continued from."""
    import pandas as pd
    frame = (pd.read_csv(path) if os.path.exists(path)
             else pd.DataFrame({"epoch": []}))
    frame = frame.drop_duplicates("epoch", keep="last").sort_values("epoch")
    frame = frame.reset_index(drop=True)
    if os.path.exists(path):
        atomic.write_csv(path, frame)
    frame.attrs["seconds"] = seconds
    return frame
