"""TensorBoard's HParams dashboard: one session per run or trial.

A *session* is a folder holding the session's hyperparameters (written when
it starts) and its final metrics as scalars (written when it ends, with its
status).  Keras' TensorBoard callback writes the learning curves into
subfolders of the same session (`train/`, `validation/`), so the dashboard
links each session to its curves.  A sweep also writes the *experiment*
at its root: which hyperparameters and metrics the dashboard shows as
columns (the searched fields and the main ones, not all thirty).
"""

from __future__ import annotations

import time

import tensorflow as tf
from tensorboard.plugins.hparams import api as hp_api
from tensorboard.plugins.hparams import api_pb2
from tensorboard.plugins.hparams import summary as hp_summary

# Final metrics shown as columns, when a run has them.
FINAL_METRICS = ("test_accuracy", "test_loss", "val_loss", "val_accuracy",
                 "loss", "accuracy", "train_seconds")
ALWAYS_SHOWN = ("dataset", "algorithm", "arch", "lr")


def _scalar(value):
    """A value the HParams plugin accepts (bool, int, float or str)."""
    return value if isinstance(value, (bool, int, float, str)) else str(value)


def start_session(logdir: str, hparams: dict, session_id: str) -> None:
    with tf.summary.create_file_writer(logdir).as_default():
        hp_api.hparams({k: _scalar(v) for k, v in hparams.items()},
                       trial_id=session_id)


def end_session(logdir: str, metrics: dict, failed: bool = False) -> None:
    """Final metrics (step 0) and the session's status."""
    status = (api_pb2.STATUS_FAILURE if failed else api_pb2.STATUS_SUCCESS)
    writer = tf.summary.create_file_writer(logdir)
    with writer.as_default():
        for name in FINAL_METRICS:
            value = metrics.get(name)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                tf.summary.scalar(name, float(value), step=0)
        tf.summary.experimental.write_raw_pb(
            hp_summary.session_end_pb(status, time.time())
            .SerializeToString(), step=0)
    writer.flush()


def write_experiment(logdir: str, space: dict, metric_names) -> None:
    """The dashboard's columns: searched fields plus the main ones."""
    shown = [name for name, values in space.items()
             if len(values) > 1 or name in ALWAYS_SHOWN]
    hparams = [hp_api.HParam(name, hp_api.Discrete(
        sorted({_scalar(v) for v in space[name]}, key=str)))
        if _uniform_type(space[name]) else hp_api.HParam(name)
        for name in shown]
    metrics = [hp_api.Metric(name, display_name=name)
               for name in metric_names]
    with tf.summary.create_file_writer(logdir).as_default():
        hp_api.hparams_config(hparams=hparams, metrics=metrics)


def _uniform_type(values) -> bool:
    """Discrete domains need values of one type."""
    return len({type(_scalar(v)) for v in values}) == 1
