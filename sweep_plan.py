"""A sweep's plan: its grid in order and its id, persisted in sweep.json.

keras-tuner's GridSearch loses its order on reload (its issue #1055): the
order lives here instead, fixed when the sweep starts, and every process of
the sweep (a rerun, a restart after a crash, the workers of a parallel or
distributed sweep) reads the same plan.  A rerun with flags that make
another grid is refused rather than mixed in.  Trial names are
`t<index in the grid>-<sweep id>`, stable across reruns and unique across
sweeps.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import time

import hparams as hparams_lib
import space as space_lib
from errors import UsageError

SWEEP_LEVEL = ("objective", "executions_per_trial")  # one value per sweep
SWEEP_FILE = "sweep.json"
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
    config = next(space_lib.grid(space))
    try:
        train.check_settings(config)
    except UsageError as error:
        return str(error)
    return "no valid configuration"


def invocation(space, run_settings=None) -> dict:
    """What ran the sweep: command, versions, code revision, machine, where
    it read its data, and its run settings (`--workers`): none of them
    part of the sweep's identity."""
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
            "git_dirty": bool(git("status", "--porcelain")),
            **(run_settings or {})}


def open_sweep(sweep_dir, configs, space, run_settings=None) -> Sweep:
    """Reads the folder's plan, or writes it on first use.  In distributed
    mode only the chief (or a lone process) writes the plan, with a record
    of the command that ran it; workers wait for it."""
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
        plan["invocations"].append(invocation(space, run_settings))
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


def wait_for(path, seconds):
    deadline = time.time() + seconds
    while not os.path.exists(path):
        if time.time() > deadline:
            raise UsageError(f"{path} did not appear within {seconds} s: "
                             "start the chief first, with the same "
                             "--sweep_dir on a shared folder")
        time.sleep(0.5)


def plan_grid(given):
    """The space and its valid configurations, in order; refuses a sweep
    that cannot run."""
    for name in (*SWEEP_LEVEL, *hparams_lib.LOCATION_FIELDS):
        if len(given.get(name, ())) > 1:
            raise UsageError(f"--{name} takes one value per sweep")
    space = space_lib.search_space(given)
    configs = list(space_lib.grid(space, config_is_valid))
    if not configs:
        raise UsageError(
            f"no valid configuration to run: {first_problem(space)}")
    return space, configs


def execution_dir(sweep: Sweep, index: int, execution: int) -> str:
    return os.path.join(sweep.trial_dir(index), f"exec{execution}")
