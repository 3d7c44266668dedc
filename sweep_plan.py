"""A sweep's plan: its grid in order and its id, persisted in sweep.json.

keras-tuner's GridSearch loses its order on reload (its issue #1055): the
order lives here instead, fixed when the sweep starts, and every process of
the sweep (a rerun, a restart after a crash, the workers of a parallel or
distributed sweep) reads the same plan.  A rerun with flags that make
another grid is refused rather than mixed in, but a widened one (a field
given more values) is appended to the plan: the trials already run keep
their names and results, and only the new ones run.  Trial names are
`t<index in the grid>-<sweep id>`, stable across reruns and unique across
sweeps.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import sys
import time
from typing import Mapping, Sequence

import arch
import datasets
import hparams as hparams_lib
from runtime.errors import UsageError
from hparams import (FIELDS, check_declarations, check_network, value_text)

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


# --- The search space ---------------------------------------------------------


def search_space(given: Mapping[str, Sequence]) -> dict[str, tuple]:
    """Every field's values in a sweep: given values, else its grid, else its
    default alone (the arch: the dataset's).  Refuses, before any trial, an
    arch that does not fit one of the sweep's datasets."""
    check_declarations()
    space = {f.name: tuple(given.get(f.name) or f.grid or (f.default,))
             for f in FIELDS}
    if not given.get("arch"):
        archs = {d: datasets.SPECS[d].default_arch for d in space["dataset"]}
        if len(set(archs.values())) > 1:
            raise UsageError(
                "these datasets have different default archs ("
                + ", ".join(f"{d}: {a}" for d, a in archs.items())
                + "); give --arch, or sweep them separately")
        space["arch"] = tuple(dict.fromkeys(archs.values()))
    if not given.get("batch_norm") and not any(
            "batch_norm" in arch.reads_flags(a) for a in space["arch"]):
        space["batch_norm"] = (False,)  # every block pins its own
    network = ("arch", "dataset", "image_size", "batch_size",
               "problem_type", "batch_norm", "use_bias")
    for values in itertools.product(*(space[n] for n in network)):
        config = dict(zip(network, values))
        if config["problem_type"] == "classification" or not config[
                "image_size"]:
            check_network(config)
    return space


def grid(space: Mapping[str, Sequence], is_valid=lambda config: True):
    """Every valid configuration of the space, in a fixed order (the order of
    the fields, then of each field's values)."""
    names = list(space)
    for combination in itertools.product(*(space[n] for n in names)):
        config = dict(zip(names, combination))
        if is_valid(config):
            yield config


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
    try:
        hparams_lib.check(config)
    except UsageError:
        return False
    return True


def first_problem(space) -> str:
    """Why no configuration of the space is valid."""
    config = next(grid(space))
    try:
        hparams_lib.check(config)
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
    data_dir = datasets.data_dir({"data_dir": space["data_dir"][0]})
    return {"command": [sys.executable, *sys.argv], "cwd": os.getcwd(),
            "data_dir": os.path.abspath(data_dir) if data_dir else None,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "host": platform.node(), "python": platform.python_version(),
            "tuner_id": os.environ.get("KERASTUNER_TUNER_ID", "tuner0"),
            "versions": versions, "git_revision": git("rev-parse", "HEAD"),
            "git_dirty": bool(git("status", "--porcelain")),
            **(run_settings or {})}


def open_sweep(sweep_dir, configs, space, run_settings=None) -> Sweep:
    """Reads the folder's plan, or writes it on first use; a widened grid
    (`check_extends`) appends its new configurations to the plan, so the
    trials already run keep their names and results.  In distributed mode
    only the chief (or a lone process) writes the plan, with a record of
    the command that ran it; workers wait for it."""
    from runtime import atomic
    path = os.path.join(sweep_dir, SWEEP_FILE)
    configs = [identity(c) for c in
               json.loads(json.dumps(configs, default=str))]
    if is_worker():
        plan = wait_for_plan(sweep_dir, configs, WORKER_WAIT_SECONDS)
    else:
        plan = read_plan(sweep_dir)
    added = []
    if plan is None:
        plan = {"sweep_id": os.urandom(3).hex(), "grid": configs,
                "space": {k: list(v) for k, v in identity(space).items()},
                "objective": space["objective"][0], "invocations": []}
    else:
        added = new_configs(plan, configs, sweep_dir)
    if not is_worker():
        if added:
            plan["grid"] = plan["grid"] + added
            plan["space"] = {k: list(v) for k, v in identity(space).items()}
        plan["invocations"].append({**invocation(space, run_settings),
                                    "added_configurations": len(added)})
        atomic.write_json(path, plan)
    searched = [name for name, values in plan["space"].items()
                if len(values) > 1]
    return Sweep(sweep_dir, plan["sweep_id"], plan["grid"], searched,
                 plan["objective"])


def new_configs(plan, configs, sweep_dir) -> list:
    """The configurations of `configs` the plan lacks; refuses configs
    that leave out one of the plan's (a rerun may widen a sweep, not
    narrow it: `check_extends` says which setting, before TensorFlow)."""
    planned = {values_hash(identity(c)) for c in plan["grid"]}
    wanted = {values_hash(c) for c in configs}
    if not planned <= wanted:
        raise UsageError(
            f"{sweep_dir} holds another sweep ({len(planned - wanted)} of "
            f"its {len(planned)} configurations are not in this grid); "
            f"rerun it with the flags in "
            f"{os.path.join(sweep_dir, SWEEP_FILE)} or use a new folder")
    return [c for c in configs if values_hash(c) not in planned]


def wait_for_plan(sweep_dir, configs, seconds):
    """A worker's plan: the chief's, once it holds every configuration of
    the worker's grid (a widened sweep's chief may not have written it
    yet)."""
    path = os.path.join(sweep_dir, SWEEP_FILE)
    deadline = time.time() + seconds
    wait_for(path, seconds)
    while True:
        plan = read_plan(sweep_dir)
        planned = {values_hash(identity(c)) for c in plan["grid"]}
        if {values_hash(c) for c in configs} <= planned:
            return plan
        if time.time() > deadline:
            raise UsageError(f"{path} does not hold this worker's grid: "
                             "start every worker with the chief's flags")
        time.sleep(0.5)


def is_worker() -> bool:
    """A worker of keras-tuner's chief/worker mode (not the chief), read
    from the environment as keras-tuner reads it; importing keras-tuner
    would load TensorFlow before the checks that need none of it."""
    if "KERASTUNER_ORACLE_IP" not in os.environ:
        return False
    for name in ("KERASTUNER_ORACLE_PORT", "KERASTUNER_TUNER_ID"):
        if name not in os.environ:
            raise UsageError(f"KERASTUNER_ORACLE_IP is set but {name} is "
                             "not: the chief/worker mode needs the oracle's "
                             "IP, its port and each process's tuner id")
    return "chief" not in os.environ["KERASTUNER_TUNER_ID"]


PLAN_KEYS = ("sweep_id", "grid", "space", "objective")
RESTORE_PLAN = "restore it: it holds the sweep's grid and id"


def read_plan(sweep_dir):
    """sweep.json, None in a new folder; refuses a damaged one."""
    from runtime import folders
    path = os.path.join(sweep_dir, SWEEP_FILE)
    plan = folders.read_json(path, PLAN_KEYS, RESTORE_PLAN)
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

    from runtime import folders
    pattern = os.path.join(glob.escape(sweep_dir), "trials", "*", "exec*")
    for run in sorted(glob.glob(pattern)):
        folders.read_json(os.path.join(run, "metrics.json"))
        folders.read_json(os.path.join(run, "failure.json"), ("reason",))


def check_extends(sweep_dir, space) -> None:
    """Refuses, before TensorFlow loads, a rerun whose settings are not the
    sweep's or a widening of them: a field may gain values (a longer
    `--lr` list, a wider grid in hparams.py), not lose or change one."""
    plan = read_plan(sweep_dir)
    if plan is None:
        return
    changed = space_changes(plan["space"], identity(space))
    if changed:
        raise UsageError(
            f"{sweep_dir} holds another sweep ({'; '.join(changed)}): a "
            "sweep folder takes more values of a setting, not other ones; "
            "rerun it with the flags in "
            f"{os.path.join(sweep_dir, SWEEP_FILE)} or use a new folder")


def space_changes(old: dict, new: dict) -> list[str]:
    """What `new` changes of the space `old` other than adding values, in
    words ("epochs was 10, now 3", "lr lost 0.01")."""
    changes = []
    for name in [*old, *(n for n in new if n not in old)]:
        if name not in old or name not in new:
            changes.append(f"{name} is {'new' if name in new else 'gone'}"
                           " (another version of bpfree made this sweep)")
            continue
        before, after = as_json(old[name]), as_json(new[name])
        lost = [v for v in before if v not in after]
        if not lost:
            continue
        if len(before) == len(after) == 1:
            changes.append(f"{name} was {value_text(before[0])}, now "
                           f"{value_text(after[0])}")
        else:
            changes.append(f"{name} lost {', '.join(map(value_text, lost))}")
    return changes


def as_json(values) -> list:
    """Values as sweep.json holds them (so 0.001 read back equals 1e-3)."""
    return json.loads(json.dumps(list(values), default=str))


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
    space = search_space(given)
    configs = list(grid(space, config_is_valid))
    if not configs:
        raise UsageError(
            f"no valid configuration to run: {first_problem(space)}")
    return space, configs


def execution_dir(sweep: Sweep, index: int, execution: int) -> str:
    return os.path.join(sweep.trial_dir(index), f"exec{execution}")
