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

import atomic
import faults
from errors import StorageError

STATE = "state.json"
ATTEMPTS = "attempts.jsonl"


def read_json(path):
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def seed_state_variables(model):
    return [v for v in model.variables if "seed_generator_state" in v.path]


class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
    """Backs up after every epoch; restores at the start of `fit`."""

    def __init__(self, backup_dir):
        super().__init__(backup_dir, save_freq="epoch",
                         delete_checkpoint=False)  # the caller removes it
        self.state_path = os.path.join(backup_dir, STATE)
        state = read_json(self.state_path) or {}
        self.seconds_before = state.get("train_seconds", 0.0)
        self.began = time.time()

    def restored_epoch(self) -> int:
        state = read_json(self.state_path)
        return state["epoch"] if state else 0

    def train_seconds(self) -> float:
        """Training time over all attempts (up to the last backup for the
        earlier ones)."""
        return self.seconds_before + time.time() - self.began

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
        atomic.write_json(self.state_path, {
            "epoch": self._current_epoch, "weights": name,
            "seed_states": seeds, "train_seconds": self.train_seconds()})
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


def tidy_history(path: str, train_seconds: float):
    """The per-epoch history of all attempts, one row per epoch.

    An epoch logged but killed before its backup is trained again on resume
    and logged twice; the later row is the one the run continued from."""
    import pandas as pd
    frame = (pd.read_csv(path) if os.path.exists(path)
             else pd.DataFrame({"epoch": []}))
    frame = frame.drop_duplicates("epoch", keep="last").sort_values("epoch")
    frame = frame.reset_index(drop=True)
    if os.path.exists(path):
        atomic.write_csv(path, frame)
    frame.attrs["train_seconds"] = train_seconds
    return frame
