"""A grid sweep over the fields not pinned on the command line.

    python tune.py --sweep_dir=data/exp --dataset=digits --algorithm=dfa
    python tune.py --sweep_dir=data/exp --workers=2 ...   # 2 trials at once

(`train.bash` wraps this and reruns it after a crash.)  Layout of the
sweep folder:

    sweep.json              the grid, in order, its id, and every command
                            that ran it (with package versions, code
                            revision, --workers)
    sweep.lock              held by the process that runs the sweep
    tuner/                  keras-tuner's oracle and trial records
    trials/<trial>/<rule,searched values>/
                            the trial's HParams session (TensorBoard): its
                            per-epoch curves, mean over executions
    trials/<trial>/exec<k>/ one run per execution seed: metrics.json,
                            history.csv, model.keras, tensorboard/, backup/
                            while it runs, failure.json if it failed
    results.csv             one row per execution, rebuilt after every trial

Rerunning the same command continues the sweep: configurations already
finished (or failed) are not run again, and an interrupted run resumes from
its last finished epoch (sweep_plan.py keeps the grid's order, since
keras-tuner's GridSearch loses it).  `tensorboard --logdir DIR` shows
every trial, side by side in the HParams tab.

`--workers=N` runs N trials at once on this machine (launcher.py): this
process serves the grid to N worker processes through keras-tuner's
chief/worker mode on 127.0.0.1.  It is a run setting, not a hyperparameter:
a sweep may be continued with another N.

Distributed over machines: start the same command with
KERASTUNER_TUNER_ID=chief (it serves the grid) and with
KERASTUNER_TUNER_ID=worker<k> on every worker, all with
KERASTUNER_ORACLE_IP / KERASTUNER_ORACLE_PORT set to the chief's address;
the sweep folder must be shared (same path on every machine).  Outside
that mode one process runs a sweep folder at a time: it holds `sweep.lock`
(folders.py), and a second one is refused; the workers of either mode do
not take it.  A write that fails (a full disk) stops the sweep
(errors.StorageError, exit status 4) with the trial left running, not
failed, so that a rerun resumes it.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import sys
import time
import traceback

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import faults  # noqa: E402
import space as space_lib  # noqa: E402
import step_cache  # noqa: E402
from errors import (Interrupted, StorageError, UsageError,  # noqa: E402
                    storage_error)
# (what other modules and the tests read from here)
from sweep_plan import (SWEEP_FILE, Sweep, check_records,  # noqa: E402,F401
                        check_extends, execution_dir, is_worker,
                        open_sweep, plan_grid, read_plan)
from sweep_results import (RESULTS_FILE, finished_trials,  # noqa: E402,F401
                           mean_metrics, objective_value, read_json,
                           results_table, show_table, write_results)


# --- keras-tuner --------------------------------------------------------------


def make_atomic_tuner_state() -> None:
    """keras-tuner writes its oracle, tuner and trial records in place, so a
    kill during a write leaves JSON it cannot reload.  Route its one JSON
    writer through an atomic write."""
    import atomic
    from keras_tuner.src import utils as kt_utils

    def save_json(path, obj):
        text = json.dumps(obj)
        atomic.write_text(path, text)
        return text
    kt_utils.save_json = save_json


def make_oracle(sweep: Sweep):
    import keras_tuner

    class GridOracle(keras_tuner.Oracle):
        """Walks the sweep's persisted grid, skipping configurations already
        tried (matched by their values, so a rerun never repeats one).
        With several workers asking, each is handed trials of the graph it
        ran last (`next_config`)."""

        def __init__(self, *args, **kw):
            super().__init__(*args, **kw)
            self._asking = None  # the worker whose request is served
            self._last_graph = {}  # worker: the graph of its last trial
            self._waiting_since = {}  # worker: when it was first told IDLE

        def create_trial(self, tuner_id):
            self._asking = tuner_id
            return super().create_trial(tuner_id)

        def populate_space(self, trial_id):
            pending = [c for c in sweep.configs
                       if self._compute_values_hash(c) not in
                       self._tried_so_far]
            if not pending:
                return {"status": "STOPPED"}
            asking, last = self._asking, self._last_graph
            config = pending[0]  # a serial sweep: the grid's order
            if len(self.tuner_ids) > 1:
                since = self._waiting_since.setdefault(asking,
                                                       time.monotonic())
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

    n = len(sweep.configs)
    return GridOracle(objective=keras_tuner.Objective(sweep.objective, "min"),
                      max_trials=n, max_consecutive_failed_trials=n + 1)


IDLE_SECONDS = 0.2
WAIT_FOR_AT_MOST = 2  # trials of a graph another worker holds
# A worker waits no longer than this for another (which may have died, in
# the manual chief/worker mode) before it runs that worker's graph itself.
MAX_WAIT_SECONDS = 30.0


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


def make_tuner(hypermodel, oracle, sweep: Sweep, verbose=2,
               announce=False):
    """`verbose`: Keras' fit verbosity; `announce`: a line per trial."""
    import keras_tuner

    import launcher

    class SweepTuner(keras_tuner.engine.base_tuner.BaseTuner):
        """Runs each trial's executions; the objective is their mean."""

        def run_trial(self, trial, *args, **kwargs):
            try:
                return run_trial(sweep, self.hypermodel.build(
                    trial.hyperparameters), verbose, announce,
                    launcher.sweep_workers())
            except Exception as error:
                storage = storage_error(error)
                if storage is None:
                    raise
                # keras-tuner would record the trial as INVALID and never
                # run it again; a FatalError ends the search with the trial
                # still running, so that a rerun resumes it.
                raise keras_tuner.errors.FatalError(str(storage)) \
                    from storage

        def on_trial_end(self, trial):
            super().on_trial_end(trial)
            write_results(sweep)
            faults.point("trial_end")

    import quiet
    # keras-tuner prints "Reloading Tuner from ..." on every rerun.
    with (contextlib.nullcontext() if quiet.verbose()
          else contextlib.redirect_stdout(io.StringIO())):
        return SweepTuner(oracle, hypermodel, directory=sweep.path,
                          project_name="tuner", overwrite=False)


# --- Trials -------------------------------------------------------------------


def run_trial(sweep: Sweep, hp, verbose, announce=False, workers=1) -> dict:
    """Every execution seed of one configuration; a failed one fails the
    trial with its reason.  Executions already finished are read, not
    rerun.  `announce`: one line when it starts, one per epoch (a live line
    on a terminal: progress.py), one when it ends."""
    import keras_tuner
    import progress
    import train
    index = sweep.index_of(hp)
    name = sweep.trial_name(index)
    label = f"[{index + 1}/{len(sweep.configs)}]"
    if announce:
        print(f"{label} {describe(hp, sweep.searched)}", flush=True)
    progress.trial_started(label, finished_trials(sweep), len(sweep.configs),
                           hp.executions_per_trial - 1, workers)
    began = time.time()
    results = []
    failure = None
    for execution in range(hp.executions_per_trial):
        progress.execution_started(
            hp.executions_per_trial - execution - 1,
            hp.seed + execution if hp.executions_per_trial > 1 else None)
        metrics, failure = run_execution(
            hp.replace(seed=hp.seed + execution),
            execution_dir(sweep, index, execution), verbose,
            logs=train.RunLogs(
                tensorboard=session_dir(sweep, index, execution, hp),
                session_group=name, progress=announce and not verbose,
                single_run=False))
        if failure:
            break
        results.append(metrics)
    progress.trial_ended()
    if failure:
        if announce:
            print(f"{label} FAILED: {failure}", flush=True)
        raise keras_tuner.errors.FailedTrialError(f"{name}: {failure}")
    values = [objective_value(m, sweep.objective) for m in results]
    objective = sum(values) / len(values)
    if announce:
        means = mean_metrics(results)
        shown = "".join(f", {k} {means[k]:.4f}" for k in (
            "test_accuracy",) if k in means and k != sweep.objective)
        print(f"{label} done in {time.time() - began:.0f} s: "
              f"{sweep.objective} {objective:.4f}{shown}", flush=True)
    return {sweep.objective: objective}


def session_dir(sweep: Sweep, index: int, execution: int, hp) -> str:
    """An execution's TensorBoard run and HParams session, named by its
    rule and searched values (`trials/t001-3fa2c1/dfa,lr=0.01/exec0`):
    one run per execution, grouped by trial in the HParams table."""
    import board
    return os.path.join(sweep.trial_dir(index),
                        board.session_name(hp, sweep.searched),
                        f"exec{execution}")


def describe(hp, searched) -> str:
    """The searched values of a configuration (its rule if none is)."""
    from hparams import value_text
    return " ".join(f"{n}={value_text(hp[n])}" for n in searched) or \
        f"algorithm={hp['algorithm']}"


def run_execution(hp, workdir, verbose, logs=None):
    """(metrics, failure reason or None) of one run, reusing a finished
    one.  A failure is written to failure.json before it is reported."""
    import atomic
    import train
    failed = read_json(os.path.join(workdir, "failure.json"))
    if failed:
        return None, failed["reason"]
    metrics = read_json(os.path.join(workdir, "metrics.json"))
    if metrics is None:
        try:
            metrics = train.train_and_evaluate(hp, workdir, verbose=verbose,
                                               logs=logs)
        except Exception as error:  # a trial's crash must not end the sweep
            if storage_error(error, workdir):
                raise  # the disk's fault, not the trial's: stop the sweep
            import quiet
            if quiet.verbose():
                traceback.print_exc()
            reason = f"{type(error).__name__}: {error}".splitlines()[0]
            atomic.write_json(os.path.join(workdir, "failure.json"),
                              {"reason": reason})
            train.end_session(logs, workdir, failed=True)
            return None, reason
    if metrics.get("diverged"):
        reason = metrics["diverged_reason"]
        atomic.write_json(os.path.join(workdir, "failure.json"),
                          {"reason": reason})
        return None, reason
    return metrics, None


# --- The sweep ----------------------------------------------------------------


def run_sweep(given, sweep_dir, verbose=True, workers=1):
    """Validates the sweep, runs the trials not yet done, writes results;
    `workers` > 1 runs that many trials at once (launcher.py).

    The folder is held (folders.hold_sweep) from before the first write to
    the end; another sweep on it is refused."""
    import datasets
    import folders
    import launcher
    workers = launcher.parse_workers(workers)
    if workers > 1 and is_worker():
        raise UsageError("--workers is for the process that runs the sweep "
                         "(or the chief), not for a worker of the "
                         "chief/worker mode")
    folders.check_writable(sweep_dir, "--sweep_dir")
    if not is_worker():
        folders.check_not_held(sweep_dir)  # (at once: before TensorFlow)
    check_extends(sweep_dir, space_lib.search_space(given))
    check_records(sweep_dir)
    space, configs = plan_grid(given)
    for dataset in sorted({c["dataset"] for c in configs}):
        datasets.load_arrays({**configs[0], "dataset": dataset})
    workers = min(workers, len(configs))  # (more would have nothing to do)
    created = not os.path.exists(sweep_dir)
    lock = None if is_worker() else folders.hold_sweep(sweep_dir)
    import quiet
    details = verbose and quiet.verbose()  # -v: keras-tuner's own output
    try:
        sweep = open_sweep(sweep_dir, configs, space, {"workers": workers})
        make_atomic_tuner_state()
        import hypermodels
        import keras_tuner
        keras_tuner.src.config.DEBUG = details  # its traceback per failure
        tuner = make_tuner(hypermodels.ProjectionHyperModel(space),
                           make_oracle(sweep), sweep,
                           verbose=2 if details else 0, announce=verbose)
    except Exception:
        if created:
            shutil.rmtree(sweep_dir, ignore_errors=True)
            if lock is not None:
                lock.release()
        raise
    if not is_worker():  # (the chief, or a lone process)
        import board  # (TensorFlow: once the sweep is known to be valid)
        board.write_experiment(os.path.join(sweep_dir, "trials"), space)
    if verbose and not is_worker():
        print(sweep_line(sweep, workers), flush=True)
    faults.point("startup")
    import keras_tuner
    try:
        if workers > 1:
            launcher.run(tuner, sweep, given, workers, announce=verbose,
                         details=details)
        else:
            tuner.search(verbose=1 if details else 0)
    except keras_tuner.errors.FatalError as error:
        if isinstance(error.__cause__, StorageError):
            raise error.__cause__ from None
        raise
    except Interrupted:
        write_results(sweep)  # what the stopped trials finished
        raise
    frame = write_results(sweep)
    if is_worker():
        return frame  # (the chief shows the table)
    if verbose and not frame.empty:
        print(show_table(frame, sweep.searched))
        print(f"Results: {os.path.join(sweep_dir, RESULTS_FILE)}")
    if lock is not None:
        lock.release()
    return frame


def sweep_line(sweep: Sweep, workers: int) -> str:
    """'Sweep data/exp (3fa2c1): 4 configurations over batch_norm, lr'."""
    n = len(sweep.configs)
    over = (f" over {', '.join(sweep.searched)}" if sweep.searched else "")
    return (f"Sweep {sweep.path} ({sweep.sweep_id}): {n} configuration"
            f"{'s' if n != 1 else ''}{over}"
            + (f", {workers} at once" if workers > 1 else ""))


def main(flag_values):
    import launcher
    if launcher.is_launched_worker():
        launcher.become_worker()
    if not flag_values.sweep_dir:
        raise UsageError("--sweep_dir is required (where the sweep writes)")
    workers = launcher.parse_workers(flag_values.workers)
    run_sweep(space_lib.given_on_command_line(flag_values),
              flag_values.sweep_dir, verbose=launcher.announces(),
              workers=workers)


FLAGS = {"sweep_dir": "Folder of the sweep.",
         "workers": "Trials run at once on this machine (default 1), each "
                    "by a worker process (with GPUs: one GPU each, round "
                    "robin; on CPU the cores are shared out).  A run "
                    "setting, not a hyperparameter: a sweep may be "
                    "continued with another number."}

if __name__ == "__main__":
    import cli
    cli.exit_with(cli.run(sys.argv, main, FLAGS))
