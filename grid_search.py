"""A sweep in keras-tuner's three nouns, each with one job:

    ProjectionHyperModel  what to build: the configuration (HParams) of a
                          trial's hyperparameters
    GridOracle            what to try next: the sweep's persisted grid, in
                          order, skipping what was tried (sweep_plan.py)
    SweepTuner            runs a trial: its executions (trials.py), then
                          results.csv

Importing this module loads keras-tuner, so TensorFlow: tune.py imports it
once the sweep is checked.
"""

from __future__ import annotations

import contextlib
import io
import json
import time
from typing import Mapping, Sequence

import keras_tuner

from runtime import faults
from runtime import step_cache
import trials
from runtime.errors import storage_error
from hparams import LOCATION_FIELDS, HParams
from sweep_plan import Sweep
from sweep_results import write_results


class ProjectionHyperModel(keras_tuner.HyperModel):
    """One hyperparameter per field of hparams.py, with the field's name:
    `hp.Fixed` for a value pinned on the command line (or a one-value
    grid), `hp.Choice` over the grid otherwise.  `build` returns the
    resolved HParams, which the trial trains through
    `train.train_and_evaluate`, the same path as a single run.  The space
    is copied per trial, never mutated."""

    def __init__(self, space: Mapping[str, Sequence]):
        super().__init__(name="projection")
        self.space = {name: tuple(values) for name, values in space.items()}

    def build(self, hp) -> HParams:
        values = {}
        for name, choices in self.space.items():
            if name in LOCATION_FIELDS:
                # Where this process finds things: not a value of the trial
                # (a resumed trial keeps the values it was created with).
                values[name] = choices[0]
            elif len(choices) == 1:
                values[name] = hp.Fixed(name, choices[0])
            else:
                values[name] = hp.Choice(name, list(choices), ordered=False)
        return HParams(values)


IDLE_SECONDS = 0.2
WAIT_FOR_AT_MOST = 2  # trials of a graph another worker holds
# A worker waits no longer than this for another (which may have died, in
# the manual chief/worker mode) before it runs that worker's graph itself.
MAX_WAIT_SECONDS = 30.0


class GridOracle(keras_tuner.Oracle):
    """Walks the sweep's persisted grid, skipping configurations already
    tried (matched by their values, so a rerun never repeats one; keras-
    tuner's GridSearch loses its order on reload, its issue #1055).  With
    several workers asking, each is handed trials of the graph it ran last
    (`next_config`)."""

    def __init__(self, sweep: Sweep):
        n = len(sweep.configs)
        super().__init__(
            objective=keras_tuner.Objective(sweep.objective, "min"),
            max_trials=n, max_consecutive_failed_trials=n + 1)
        self.sweep = sweep
        self._asking = None  # the worker whose request is served
        self._last_graph = {}  # worker: the graph of its last trial
        self._waiting_since = {}  # worker: when it was first told IDLE

    def create_trial(self, tuner_id):
        self._asking = tuner_id
        return super().create_trial(tuner_id)

    def populate_space(self, trial_id):
        pending = [c for c in self.sweep.configs
                   if self._compute_values_hash(c) not in self._tried_so_far]
        if not pending:
            return {"status": "STOPPED"}
        asking, last = self._asking, self._last_graph
        config = pending[0]  # a serial sweep: the grid's order
        if len(self.tuner_ids) > 1:
            since = self._waiting_since.setdefault(asking, time.monotonic())
            config = next_config(pending, last.get(asking), [
                g for tuner, g in last.items()
                if tuner != asking and tuner in self.tuner_ids],
                may_wait=time.monotonic() - since < MAX_WAIT_SECONDS)
            if config is None:  # ask again soon (keras-tuner's IDLE)
                time.sleep(IDLE_SECONDS)
                return {"status": "IDLE"}
            del self._waiting_since[asking]
        last[asking] = step_cache.graph_of(config)
        return {"status": "RUNNING", "values": dict(config)}


def next_config(pending, mine, others, may_wait=True):
    """What a worker runs next, from the pending configurations in grid
    order: one of the graph it ran last (`mine`), whose compiled steps it
    reuses; else the first of a graph no other worker holds (`others`: the
    graphs the other workers still in the sweep ran last); else None
    (wait) when what is left is a few trials of graphs other workers hold:
    they run them for a fraction of what tracing them here would cost
    (unless `may_wait` is false: this worker has waited long enough);
    else the first."""
    graphs = [step_cache.graph_of(c) for c in pending]
    if mine in graphs:
        return pending[graphs.index(mine)]
    for config, graph in zip(pending, graphs):
        if graph not in others:
            return config
    # Every graph left is held by another worker.
    if may_wait and all(graphs.count(g) <= WAIT_FOR_AT_MOST
                        for g in set(graphs)):
        return None
    return pending[0]


class SweepTuner(keras_tuner.engine.base_tuner.BaseTuner):
    """Runs each trial's executions (the objective is their mean) and
    rewrites results.csv after each.  `verbose`: Keras' fit verbosity;
    `announce`: the trial's lines (trials.run_trial)."""

    def __init__(self, sweep: Sweep, space, verbose=0, announce=False,
                 workers=1):
        self.sweep, self.verbose = sweep, verbose
        self.announce, self.workers = announce, workers
        super().__init__(GridOracle(sweep), ProjectionHyperModel(space),
                         directory=sweep.path, project_name="tuner",
                         overwrite=False)

    def run_trial(self, trial, *args, **kwargs):
        try:
            return trials.run_trial(
                self.sweep, self.hypermodel.build(trial.hyperparameters),
                self.verbose, self.announce, self.workers)
        except Exception as error:
            storage = storage_error(error)
            if storage is None:
                raise
            # keras-tuner would record the trial as INVALID and never run
            # it again; a FatalError ends the search with the trial still
            # running, so that a rerun resumes it.
            raise keras_tuner.errors.FatalError(str(storage)) from storage

    def on_trial_end(self, trial):
        super().on_trial_end(trial)
        write_results(self.sweep)
        faults.point("trial_end")


def make_tuner(sweep: Sweep, space, verbose=0, announce=False, workers=1,
               quiet=True) -> SweepTuner:
    """The sweep's tuner, its records written atomically; `quiet` hides
    keras-tuner's "Reloading Tuner from ..." of every rerun."""
    make_atomic_tuner_state()
    with (contextlib.redirect_stdout(io.StringIO()) if quiet
          else contextlib.nullcontext()):
        return SweepTuner(sweep, space, verbose, announce, workers)


def make_atomic_tuner_state() -> None:
    """keras-tuner writes its oracle, tuner and trial records in place, so a
    kill during a write leaves JSON it cannot reload.  Route its one JSON
    writer through an atomic write."""
    from runtime import atomic
    from keras_tuner.src import utils as kt_utils

    def save_json(path, obj):
        text = json.dumps(obj)
        atomic.write_text(path, text)
        return text
    kt_utils.save_json = save_json
