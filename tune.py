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
(sweep_lock.py), and a second one is refused; the workers of either mode do
not take it.  A write that fails (a full disk) stops the sweep
(errors.StorageError, exit status 4) with the trial left running, not
failed, so that a rerun resumes it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from runtime import faults  # noqa: E402
from runtime import folders  # noqa: E402
import launcher  # noqa: E402
from runtime import sweep_lock  # noqa: E402
from runtime.errors import Interrupted, StorageError, UsageError  # noqa: E402
from sweep_plan import (Sweep, check_extends, check_records,  # noqa: E402
                        is_worker, open_sweep, plan_grid, search_space)
from sweep_results import RESULTS_FILE, show_table, write_results  # noqa


def run_sweep(given, sweep_dir, verbose=True, workers=1):
    """Checks the sweep, runs the trials not yet done, writes and shows the
    results; `workers` > 1 runs that many trials at once (launcher.py).
    Returns the results table.  The folder is held (sweep_lock.hold_sweep)
    from before the first write to the end; another sweep is refused."""
    workers = launcher.parse_workers(workers)
    space, configs = check_sweep(given, sweep_dir, workers)
    workers = min(workers, len(configs))  # (more would have nothing to do)
    with holding(sweep_dir), started_workers(
            sweep_dir, given, workers, verbose) as pool:
        sweep, tuner = open_sweep_and_tuner(sweep_dir, space, configs,
                                            workers, verbose)
        if verbose and not is_worker():
            print(sweep_line(sweep, workers), flush=True)
        faults.point("startup")
        search(tuner, pool, sweep, workers, verbose)
        frame = write_results(sweep)
        if verbose and not is_worker() and not frame.empty:
            print(show_table(frame, sweep.searched))
            print(f"Results: {os.path.join(sweep_dir, RESULTS_FILE)}")
    return frame


def check_sweep(given, sweep_dir, workers):
    """(space, configurations) of the sweep, after every refusal that can
    come before anything is written (the data files' included), most of
    them before TensorFlow is imported."""
    import datasets
    if workers > 1 and is_worker():
        raise UsageError("--workers is for the process that runs the sweep "
                         "(or the chief), not for a worker of the "
                         "chief/worker mode")
    folders.check_writable(sweep_dir, "--sweep_dir")
    if not is_worker():
        sweep_lock.check_not_held(sweep_dir)  # (at once: before TensorFlow)
    check_extends(sweep_dir, search_space(given))
    check_records(sweep_dir)
    space, configs = plan_grid(given)
    for dataset in sorted({c["dataset"] for c in configs}):
        datasets.load_arrays({**configs[0], "dataset": dataset})
    return space, configs


@contextlib.contextmanager
def holding(sweep_dir):
    """Holds the sweep folder for this process (a worker of the
    chief/worker mode shares its chief's hold), creating it; a folder this
    call created is removed if what follows fails before the sweep is
    planned in it (`open_sweep_and_tuner`)."""
    created = not os.path.exists(sweep_dir)
    lock = None if is_worker() else sweep_lock.hold_sweep(sweep_dir)
    try:
        yield
    except BaseException:
        if created and not os.path.exists(os.path.join(sweep_dir,
                                                       "sweep.json")):
            shutil.rmtree(sweep_dir, ignore_errors=True)
        raise
    finally:
        if lock is not None:
            lock.release()


@contextlib.contextmanager
def started_workers(sweep_dir, given, workers, verbose):
    """With `workers` > 1, the worker processes (launcher.prestart), started
    before TensorFlow loads here and stopped whatever happens; else None."""
    if workers <= 1:
        yield None
        return
    pool = launcher.prestart(sweep_dir, given, workers, announce=verbose)
    try:
        yield pool
    finally:
        pool.stop()


def open_sweep_and_tuner(sweep_dir, space, configs, workers, verbose):
    """The sweep's plan (sweep.json, written or widened), its TensorBoard
    experiment and its keras-tuner tuner (TensorFlow loads here)."""
    from runtime import quiet
    details = verbose and quiet.verbose()  # -v: keras-tuner's own output
    sweep = open_sweep(sweep_dir, configs, space, {"workers": workers})
    import grid_search
    import keras_tuner
    keras_tuner.src.config.DEBUG = details  # its traceback per failure
    tuner = grid_search.make_tuner(
        sweep, space, verbose=2 if details else 0, announce=verbose,
        workers=launcher.sweep_workers(), quiet=not quiet.verbose())
    if not is_worker():  # (the chief, or a lone process)
        import tensorboard_hparams
        tensorboard_hparams.write_experiment(os.path.join(sweep_dir, "trials"), space)
    return sweep, tuner


def search(tuner, pool, sweep: Sweep, workers, verbose):
    """Runs the trials not yet done, here or on the worker processes of
    `pool` (launcher.prestart); a failed write stops it (StorageError), as
    does an interrupt, with results.csv holding what finished."""
    import keras_tuner
    from runtime import quiet
    details = verbose and quiet.verbose()
    try:
        if pool is not None:
            launcher.run(tuner, pool, sweep, workers, details=details)
        else:
            tuner.search(verbose=1 if details else 0)
    except keras_tuner.errors.FatalError as error:
        if isinstance(error.__cause__, StorageError):
            raise error.__cause__ from None
        raise
    except Interrupted:
        write_results(sweep)  # what the stopped trials finished
        raise


def sweep_line(sweep: Sweep, workers: int) -> str:
    """'Sweep data/exp (3fa2c1): 4 configurations over batch_norm, lr'."""
    n = len(sweep.configs)
    over = (f" over {', '.join(sweep.searched)}" if sweep.searched else "")
    return (f"Sweep {sweep.path} ({sweep.sweep_id}): {n} configuration"
            f"{'s' if n != 1 else ''}{over}"
            + (f", {workers} at once" if workers > 1 else ""))


def main(flag_values):
    import cli
    if launcher.is_launched_worker():
        launcher.become_worker()
    if not flag_values.sweep_dir:
        raise UsageError("--sweep_dir is required (where the sweep writes)")
    workers = launcher.parse_workers(flag_values.workers)
    run_sweep(cli.given_on_command_line(flag_values),
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
