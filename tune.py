"""A grid sweep over the fields not pinned on the command line.

    python tune.py --sweep_dir=data/exp --dataset=digits --algorithm=dfa

(`train.bash` wraps this and reruns it after a crash.)  Layout of the
sweep folder:

    sweep.json              the grid, in order, its id, and every command
                            that ran it (with package versions, code revision)
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
its last finished epoch.  Trial names are `t<index in the grid>-<sweep id>`,
stable across reruns and unique across sweeps.  `tensorboard --logdir DIR`
shows every trial, side by side in the HParams tab.

Distributed: start the same command with KERASTUNER_TUNER_ID=chief (it
serves the grid) and with KERASTUNER_TUNER_ID=worker<k> on every worker, all
with KERASTUNER_ORACLE_IP / KERASTUNER_ORACLE_PORT set to the chief's
address; the sweep folder must be shared (same path on every machine).
Outside that mode one process runs a sweep folder at a time: it holds
`sweep.lock` (folders.py), and a second one is refused.  A write that fails
(a full disk) stops the sweep (errors.StorageError, exit status 4) with
the trial left running, not failed, so that a rerun resumes it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import shutil
import sys
import time
import traceback

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import faults  # noqa: E402
import hparams as hparams_lib  # noqa: E402
from errors import StorageError, UsageError, storage_error  # noqa: E402

SWEEP_LEVEL = ("objective", "executions_per_trial")  # one value per sweep
SWEEP_FILE = "sweep.json"
RESULTS_FILE = "results.csv"
WORKER_WAIT_SECONDS = 300  # how long a worker waits for the chief's grid


def values_hash(values) -> str:
    text = json.dumps(values, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def identity(values) -> dict:
    """What a configuration runs, without where it finds things
    (hparams.LOCATION_FIELDS: data_dir): what makes a sweep the same."""
    return {k: v for k, v in values.items()
            if k not in hparams_lib.LOCATION_FIELDS}


# --- The grid, persisted ------------------------------------------------------


@dataclasses.dataclass
class Sweep:
    """A sweep folder's fixed plan: the grid in order, and its id."""

    path: str
    sweep_id: str
    configs: list  # dicts, in grid order
    searched: list  # names of the fields that vary
    objective: str

    def trial_name(self, index: int) -> str:
        return f"t{index:03d}-{self.sweep_id}"

    def index_of(self, values) -> int:
        wanted = values_hash({k: values[k]
                              for k in identity(self.configs[0])})
        for index, config in enumerate(self.configs):
            if values_hash(identity(config)) == wanted:
                return index
        raise KeyError(f"configuration not in the grid of {self.path}")

    def trial_dir(self, index: int) -> str:
        return os.path.join(self.path, "trials", self.trial_name(index))


def config_is_valid(config) -> bool:
    import train
    try:
        train.check_settings(config)
    except UsageError:
        return False
    return True


def first_problem(space) -> str:
    """Why no configuration of the space is valid."""
    import train
    config = next(hparams_lib.grid(space))
    try:
        train.check_settings(config)
    except UsageError as error:
        return str(error)
    return "no valid configuration"


def invocation(space) -> dict:
    """What ran the sweep: command, versions, code revision, machine, and
    where it read its data (not part of the sweep's identity)."""
    import importlib.metadata
    import platform
    import subprocess
    versions = {}
    for package in ("tensorflow", "keras", "keras-tuner", "tensorboard",
                    "numpy", "pandas", "tensorflow-datasets",
                    "scikit-learn"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    here = os.path.dirname(os.path.abspath(__file__))

    def git(*args):
        try:
            return subprocess.run(["git", "-C", here, *args], check=True,
                                  capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None
    data_dir = hparams_lib.data_dir({"data_dir": space["data_dir"][0]})
    return {"command": [sys.executable, *sys.argv], "cwd": os.getcwd(),
            "data_dir": os.path.abspath(data_dir) if data_dir else None,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "host": platform.node(), "python": platform.python_version(),
            "tuner_id": os.environ.get("KERASTUNER_TUNER_ID", "tuner0"),
            "versions": versions, "git_revision": git("rev-parse", "HEAD"),
            "git_dirty": bool(git("status", "--porcelain"))}


def open_sweep(sweep_dir, configs, space) -> Sweep:
    """Reads the folder's plan, or writes it on first use.

    keras-tuner's GridSearch loses its order on reload (its issue #1055):
    the order lives here instead, fixed when the sweep starts.  A rerun with
    flags that make another grid is refused rather than mixed in.  In
    distributed mode only the chief (or a lone process) writes the plan;
    workers wait for it.
    """
    import atomic
    path = os.path.join(sweep_dir, SWEEP_FILE)
    if is_worker():
        wait_for(path, WORKER_WAIT_SECONDS)
    plan = read_plan(sweep_dir)
    configs = [identity(c) for c in
               json.loads(json.dumps(configs, default=str))]
    if plan is None:
        plan = {"sweep_id": os.urandom(3).hex(), "grid": configs,
                "space": {k: list(v) for k, v in identity(space).items()},
                "objective": space["objective"][0], "invocations": []}
    elif [values_hash(identity(c)) for c in plan["grid"]] != \
            [values_hash(c) for c in configs]:
        raise UsageError(
            f"{sweep_dir} holds another sweep ({len(plan['grid'])} "
            f"configuration(s)); rerun it with the flags in "
            f"{path} or use a new folder")
    if not is_worker():
        plan["invocations"].append(invocation(space))
        atomic.write_json(path, plan)
    searched = [name for name, values in plan["space"].items()
                if len(values) > 1]
    return Sweep(sweep_dir, plan["sweep_id"], plan["grid"], searched,
                 plan["objective"])


def is_worker() -> bool:
    """A worker of keras-tuner's chief/worker mode (not the chief)."""
    from keras_tuner.src.distribute import utils
    return utils.has_chief_oracle() and not utils.is_chief_oracle()


PLAN_KEYS = ("sweep_id", "grid", "space", "objective")
RESTORE_PLAN = "restore it: it holds the sweep's grid and id"


def read_plan(sweep_dir):
    """sweep.json, None in a new folder; refuses a damaged one."""
    import folders
    path = os.path.join(sweep_dir, SWEEP_FILE)
    plan = folders.read_record(path, PLAN_KEYS, RESTORE_PLAN)
    if plan is None:
        return None
    if not isinstance(plan["grid"], list) or not plan["grid"] or \
            not isinstance(plan["space"], dict) or \
            not all(isinstance(c, dict) for c in plan["grid"]):
        raise UsageError(f"{path} is damaged (its grid or space is not "
                         f"what the sweep wrote); {RESTORE_PLAN}")
    plan.setdefault("invocations", [])
    return plan


def check_records(sweep_dir) -> None:
    """Refuses a sweep whose run records (metrics.json, failure.json) are
    damaged (before anything is written)."""
    import glob

    import folders
    pattern = os.path.join(glob.escape(sweep_dir), "trials", "*", "exec*")
    for run in sorted(glob.glob(pattern)):
        folders.read_record(os.path.join(run, "metrics.json"))
        folders.read_record(os.path.join(run, "failure.json"), ("reason",))


def check_same_sweep(sweep_dir, space) -> None:
    """Refuses, before TensorFlow loads, to mix another grid into a sweep
    folder (open_sweep checks the grid itself again)."""
    plan = read_plan(sweep_dir)
    space = identity(space)
    if plan is not None and values_hash(identity(plan["space"])) != \
            values_hash({k: list(v) for k, v in space.items()}):
        changed = sorted(k for k in space
                         if values_hash(plan["space"].get(k))
                         != values_hash(list(space[k])))
        raise UsageError(
            f"{sweep_dir} holds another sweep (other {', '.join(changed)}); "
            f"rerun it with the flags in "
            f"{os.path.join(sweep_dir, SWEEP_FILE)} or use a new folder")


def read_json(path):
    """A run's record (None if absent); a damaged one is refused."""
    import folders
    return folders.read_record(path)


def wait_for(path, seconds):
    deadline = time.time() + seconds
    while not os.path.exists(path):
        if time.time() > deadline:
            raise UsageError(f"{path} did not appear within {seconds} s: "
                             "start the chief first, with the same "
                             "--sweep_dir on a shared folder")
        time.sleep(0.5)


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
        tried (matched by their values, so a rerun never repeats one)."""

        def populate_space(self, trial_id):
            for config in sweep.configs:
                if self._compute_values_hash(config) not in \
                        self._tried_so_far:
                    return {"status": "RUNNING", "values": dict(config)}
            return {"status": "STOPPED"}

    n = len(sweep.configs)
    return GridOracle(objective=keras_tuner.Objective(sweep.objective, "min"),
                      max_trials=n, max_consecutive_failed_trials=n + 1)


def make_tuner(hypermodel, oracle, sweep: Sweep, verbose=2,
               announce=False):
    """`verbose`: Keras' fit verbosity; `announce`: a line per trial."""
    import keras_tuner

    class SweepTuner(keras_tuner.engine.base_tuner.BaseTuner):
        """Runs each trial's executions; the objective is their mean."""

        def run_trial(self, trial, *args, **kwargs):
            try:
                return run_trial(sweep, self.hypermodel.build(
                    trial.hyperparameters), verbose, announce)
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


def execution_dir(sweep: Sweep, index: int, execution: int) -> str:
    return os.path.join(sweep.trial_dir(index), f"exec{execution}")


def run_trial(sweep: Sweep, hp, verbose, announce=False) -> dict:
    """Every execution seed of one configuration; a failed one fails the
    trial with its reason.  Executions already finished are read, not
    rerun.  `announce`: one line when it starts, one when it ends."""
    import board
    import keras_tuner
    index = sweep.index_of(hp)
    name = sweep.trial_name(index)
    progress = f"[{index + 1}/{len(sweep.configs)}]"
    if announce:
        print(f"{progress} {describe(hp, sweep.searched)}", flush=True)
    began = time.time()
    session = os.path.join(sweep.trial_dir(index),
                           board.session_name(hp, sweep.searched))
    board.start_session(session, dict(hp), name)
    results = []
    failure = None
    for execution in range(hp.executions_per_trial):
        workdir = execution_dir(sweep, index, execution)
        metrics, failure = run_execution(
            hp.replace(seed=hp.seed + execution), workdir, verbose)
        if failure:
            break
        results.append(metrics)
    board.write_curves(session, histories(
        sweep, index, len(results) + bool(failure)))
    board.end_session(session, failed=bool(failure))
    if failure:
        if announce:
            print(f"{progress} FAILED: {failure}", flush=True)
        raise keras_tuner.errors.FailedTrialError(f"{name}: {failure}")
    values = [objective_value(m, sweep.objective) for m in results]
    objective = sum(values) / len(values)
    if announce:
        means = mean_metrics(results)
        shown = "".join(f", {k} {means[k]:.4g}" for k in (
            "test_accuracy",) if k in means and k != sweep.objective)
        print(f"{progress} done in {time.time() - began:.0f} s: "
              f"{sweep.objective} {objective:.4g}{shown}", flush=True)
    return {sweep.objective: objective}


def describe(hp, searched) -> str:
    """The searched values of a configuration (its rule if none is)."""
    from board import value_text
    return " ".join(f"{n}={value_text(hp[n])}" for n in searched) or \
        f"algorithm={hp['algorithm']}"


def histories(sweep: Sweep, index: int, executions: int) -> list:
    """The history.csv frames of a trial's first `executions` runs."""
    import pandas as pd
    paths = [os.path.join(execution_dir(sweep, index, k), "history.csv")
             for k in range(executions)]
    return [pd.read_csv(p) for p in paths if os.path.exists(p)]


def run_execution(hp, workdir, verbose):
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
                                               hparams_session=False)
        except Exception as error:  # a trial's crash must not end the sweep
            if storage_error(error, workdir):
                raise  # the disk's fault, not the trial's: stop the sweep
            import quiet
            if quiet.verbose():
                traceback.print_exc()
            reason = f"{type(error).__name__}: {error}".splitlines()[0]
            atomic.write_json(os.path.join(workdir, "failure.json"),
                              {"reason": reason})
            return None, reason
    if metrics.get("diverged"):
        reason = metrics["diverged_reason"]
        atomic.write_json(os.path.join(workdir, "failure.json"),
                          {"reason": reason})
        return None, reason
    return metrics, None


def mean_metrics(results) -> dict:
    names = {k for m in results for k, v in m.items()
             if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return {k: sum(m[k] for m in results) / len(results) for k in names
            if all(k in m for m in results)} if results else {}


def objective_value(metrics, objective) -> float:
    value = metrics.get(objective)
    return float("nan") if value is None else float(value)


# --- Results ------------------------------------------------------------------


def results_table(sweep_dir):
    """One row per execution started so far: trial name, status,
    hyperparameters, final metrics, failure reason.  Built from the trial
    folders alone, so it works while a sweep runs or after it was
    interrupted.  Best first by the objective; failures last."""
    import pandas as pd
    plan = read_plan(sweep_dir)
    if plan is None:
        raise UsageError(f"{sweep_dir} is not a sweep folder (no "
                         f"{SWEEP_FILE})")
    sweep = Sweep(sweep_dir, plan["sweep_id"], plan["grid"], [],
                  plan["objective"])
    rows = []
    for index, config in enumerate(sweep.configs):
        for execution in range(int(config.get("executions_per_trial", 1))):
            workdir = execution_dir(sweep, index, execution)
            if os.path.isdir(workdir):
                rows.append(execution_row(sweep, index, execution, config,
                                          workdir))
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    frame["_rank"] = frame["status"].map(
        {"COMPLETED": 0, "INCOMPLETE": 1, "FAILED": 2})
    order = ["_rank", sweep.objective] if sweep.objective in frame \
        else ["_rank"]
    return frame.sort_values(order, kind="stable").drop(columns="_rank")


def execution_row(sweep, index, execution, config, workdir) -> dict:
    row = {"trial_id": sweep.trial_name(index), "execution": execution,
           "status": "INCOMPLETE", **config,
           "seed": config["seed"] + execution}
    failure = read_json(os.path.join(workdir, "failure.json"))
    metrics = read_json(os.path.join(workdir, "metrics.json"))
    if metrics:
        row.update({k: v for k, v in metrics.items() if k != "hparams"})
        row["status"] = "COMPLETED"
    if failure:
        row.update(status="FAILED", failure=failure["reason"])
    return row


def write_results(sweep: Sweep):
    import atomic
    frame = results_table(sweep.path)
    atomic.write_csv(os.path.join(sweep.path, RESULTS_FILE), frame)
    return frame


def show_table(frame, searched) -> str:
    metrics = [c for c in ("loss", "val_loss", "test_loss", "test_accuracy",
                           "train_seconds", "failure") if c in frame]
    columns = ["trial_id", "execution", "status", *searched, *metrics]
    frame = frame[[c for c in columns if c in frame]]
    if "failure" in frame:  # (blank, not NaN, where nothing failed)
        frame = frame.assign(failure=frame["failure"].fillna(""))
    return frame.to_string(
        index=False, float_format=lambda v: f"{v:.4g}")


# --- The sweep ----------------------------------------------------------------


def plan_grid(given):
    """The space and its valid configurations, in order; refuses a sweep
    that cannot run."""
    for name in (*SWEEP_LEVEL, *hparams_lib.LOCATION_FIELDS):
        if len(given.get(name, ())) > 1:
            raise UsageError(f"--{name} takes one value per sweep")
    space = hparams_lib.search_space(given)
    configs = list(hparams_lib.grid(space, config_is_valid))
    if not configs:
        raise UsageError(
            f"no valid configuration to run: {first_problem(space)}")
    return space, configs


def run_sweep(given, sweep_dir, verbose=True):
    """Validates the sweep, runs the trials not yet done, writes results.

    The folder is held (folders.hold_sweep) from before the first write to
    the end; another sweep on it is refused."""
    import datasets
    import folders
    folders.check_writable(sweep_dir, "--sweep_dir")
    check_same_sweep(sweep_dir, hparams_lib.search_space(given))
    check_records(sweep_dir)
    space, configs = plan_grid(given)
    for dataset in sorted({c["dataset"] for c in configs}):
        datasets.load_arrays({**configs[0], "dataset": dataset})
    created = not os.path.exists(sweep_dir)
    lock = None if is_worker() else folders.hold_sweep(sweep_dir)
    import quiet
    details = verbose and quiet.verbose()  # -v: keras-tuner's own output
    try:
        sweep = open_sweep(sweep_dir, configs, space)
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
    import board  # (TensorFlow: only once the sweep is known to be valid)
    board.write_experiment(os.path.join(sweep_dir, "trials"), space)
    if verbose:
        print(f"Sweep {sweep_dir} ({sweep.sweep_id}): {len(configs)} "
              f"configuration(s) over {', '.join(sweep.searched) or 'nothing'}",
              flush=True)
    faults.point("startup")
    import keras_tuner
    try:
        tuner.search(verbose=1 if details else 0)
    except keras_tuner.errors.FatalError as error:
        if isinstance(error.__cause__, StorageError):
            raise error.__cause__ from None
        raise
    frame = write_results(sweep)
    if verbose and not frame.empty:
        print(show_table(frame, sweep.searched))
        print(f"Results: {os.path.join(sweep_dir, RESULTS_FILE)}")
    if lock is not None:
        lock.release()
    return frame


def main(flag_values):
    if not flag_values.sweep_dir:
        raise UsageError("--sweep_dir is required (where the sweep writes)")
    run_sweep(hparams_lib.given_on_command_line(flag_values),
              flag_values.sweep_dir)


FLAGS = {"sweep_dir": "Folder of the sweep."}

if __name__ == "__main__":
    import cli
    sys.exit(cli.run(sys.argv, main, FLAGS))
