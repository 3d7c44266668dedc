"""TensorBoard's HParams dashboard: one session per run, linked to its
per-epoch curves.

A *session* is a folder holding the session's hyperparameters (written when
it starts) and its status (written when it ends).  Its metrics are the
per-epoch curves in its subfolders `train/` and `validation/`, with the tags
Keras' TensorBoard callback gives them (`epoch_loss`, `epoch_accuracy`, ...),
at steps 1, 2, ... (the epochs, counted from 1: trackers.TensorBoard); the
dashboard's "Show Metrics" draws them, and its table shows their last
value.  No final value is written as a scalar of its own: it would be a
one-point card in the Scalars tab.

- A single run's session is its `tensorboard/` folder, where Keras writes
  the curves as it trains.
- In a sweep each execution is a session of its own, written as it trains
  at `trials/<trial>/<rule,searched values>/exec<k>/` (so run names say
  what was run): one TensorBoard run per execution, no curve written
  twice.  Its *group* is the trial, so the HParams table shows one row
  per trial, whose metrics are the mean over its executions (the
  dashboard averages a group's sessions).
- The sweep's *experiment*, at `trials/`, says which hyperparameters (the
  searched fields and the main ones, not all thirty) and which metrics, as
  (group, tag) pairs, the dashboard shows as columns.
"""

from __future__ import annotations

import os
import re
import time

import tensorflow as tf
from tensorboard.plugins.hparams import api as hp_api
from tensorboard.plugins.hparams import api_pb2
from tensorboard.plugins.hparams import summary as hp_summary

from hparams import value_text

ALWAYS_SHOWN = ("dataset", "algorithm", "arch", "lr")
# (group, tag, display name): the metrics of a session, its curves' tags.
CURVES = (("validation", "epoch_loss", "validation loss"),
          ("validation", "epoch_accuracy", "validation accuracy"),
          ("train", "epoch_loss", "train loss"),
          ("train", "epoch_accuracy", "train accuracy"))


def _scalar(value):
    """A value the HParams plugin accepts (bool, int, float or str)."""
    return value if isinstance(value, (bool, int, float, str)) else str(value)


def session_name(config: dict, searched) -> str:
    """A trial's session folder: its rule and searched values, e.g.
    `dfa,lr=0.01,batch_norm=True` (a valid folder name)."""
    parts = [str(config["algorithm"])] + [
        f"{name}={value_text(config[name])}" for name in searched
        if name != "algorithm"]
    return re.sub(r"[\s/\\]+", "_", ",".join(parts))


def start_session(logdir: str, hparams: dict, session_id: str) -> None:
    """The session's hyperparameters; `session_id` names its group (the
    sessions of one group are the seeds of one configuration)."""
    writer = tf.summary.create_file_writer(logdir)
    with writer.as_default():
        hp_api.hparams({k: _scalar(v) for k, v in hparams.items()},
                       trial_id=session_id)
    writer.close()


def end_session(logdir: str, failed: bool = False) -> None:
    """The session's status (its metrics are its curves)."""
    status = (api_pb2.STATUS_FAILURE if failed else api_pb2.STATUS_SUCCESS)
    writer = tf.summary.create_file_writer(logdir)
    with writer.as_default():
        tf.summary.experimental.write_raw_pb(
            hp_summary.session_end_pb(status, time.time())
            .SerializeToString(), step=0)
    writer.close()


def metrics_of(space: dict) -> list[tuple[str, str, str]]:
    """The CURVES a sweep's sessions have: validation ones only when its
    objective holds data out, accuracy only for classification."""
    validation = any(str(o).startswith("val_")
                     for o in space.get("objective", ())) and \
        any(f > 0 for f in space.get("validation_frac", (0.1,)))
    classify = "classification" in space.get("problem_type",
                                             ("classification",))
    return [c for c in CURVES
            if (validation or c[0] != "validation")
            and (classify or not c[1].endswith("accuracy"))]


def write_experiment(logdir: str, space: dict, metrics=None) -> None:
    """The dashboard's columns: searched fields plus the main ones, and
    the sessions' curves as (group, tag) metrics."""
    shown = [name for name, values in space.items()
             if len(values) > 1 or name in ALWAYS_SHOWN]
    hparams = [hp_api.HParam(name, hp_api.Discrete(
        sorted({_scalar(v) for v in space[name]}, key=str)))
        if _uniform_type(space[name]) else hp_api.HParam(name)
        for name in shown]
    metrics = [hp_api.Metric(tag, group=group, display_name=display)
               for group, tag, display in (metrics or metrics_of(space))]
    older = event_files(logdir)
    writer = tf.summary.create_file_writer(logdir)
    with writer.as_default():
        hp_api.hparams_config(hparams=hparams, metrics=metrics)
    writer.close()
    # TensorBoard keeps the first experiment it reads in a folder: a rerun
    # (a widened grid's) replaces the older ones, after writing its own.
    for path in older:
        os.remove(path)


def event_files(logdir: str) -> list[str]:
    import glob
    return glob.glob(os.path.join(glob.escape(logdir), "events.out.*"))


def _uniform_type(values) -> bool:
    """Discrete domains need values of one type."""
    return len({type(_scalar(v)) for v in values}) == 1
