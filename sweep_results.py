"""A sweep's results table: one row per execution, built from the trial
folders alone (so it works while a sweep runs, after it was interrupted,
and whichever process of a parallel sweep ran each trial), written to
results.csv after every trial.
"""

from __future__ import annotations

import dataclasses
import os

from runtime.errors import UsageError
from runtime.folders import read_json
from hparams import value_text
from sweep_plan import (SWEEP_FILE, Sweep, check_records, execution_dir,
                        read_plan)

RESULTS_FILE = "results.csv"


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


def finished_trials(sweep: Sweep) -> int:
    """How many trials of the grid are done: every execution finished, or
    one failed (a failed execution ends its trial)."""
    done = 0
    for index, config in enumerate(sweep.configs):
        runs = [execution_dir(sweep, index, k) for k in range(
            int(config.get("executions_per_trial", 1)))]
        if any(os.path.exists(os.path.join(r, "failure.json"))
               for r in runs) or all(
                os.path.exists(os.path.join(r, "metrics.json"))
                for r in runs):
            done += 1
    return done


def write_results(sweep: Sweep):
    from runtime import atomic
    frame = results_table(sweep.path)
    atomic.write_csv(os.path.join(sweep.path, RESULTS_FILE), frame)
    return frame


SHOWN_METRICS = ("loss", "val_loss", "test_loss", "test_accuracy",
                 "train_seconds")


def show_table(frame, searched) -> str:
    """The results as printed after a sweep: each column in one format
    (metrics to 4 decimals, seconds to 1, settings as written), and no
    metric for a failed run (a diverged one's would mislead)."""
    columns = ["trial_id", "execution", "status", *searched,
               *SHOWN_METRICS, "failure"]
    frame = frame[[c for c in columns if c in frame]].copy()
    failed = frame["status"] == "FAILED"
    for column in frame.columns:
        if column in SHOWN_METRICS:
            frame[column] = [
                "" if bad or not _is_number(v) else metric_text(column, v)
                for v, bad in zip(frame[column], failed)]
        elif column in searched:
            frame[column] = frame[column].map(value_text)
    if "failure" in frame:  # (blank, not NaN, where nothing failed)
        frame["failure"] = frame["failure"].fillna("")
    return frame.to_string(index=False)


def _is_number(value) -> bool:
    import math
    return isinstance(value, (int, float)) and math.isfinite(value)


def metric_text(column: str, value: float) -> str:
    """Seconds to 1 decimal, other metrics to 4 (number_format)."""
    decimals = 1 if column.endswith("_seconds") else 4
    return f"{value:{number_format(value, decimals)}}"


WIDEST_FIXED = 1e5


def number_format(value: float, decimals: int) -> str:
    """`decimals` fixed decimals, or 4 significant digits in scientific
    notation for a value too large for them (3.609e+07) or too small (a
    nonzero loss that would read 0.0000)."""
    magnitude = abs(value)
    if magnitude >= WIDEST_FIXED or 0 < magnitude < 0.5 * 10 ** -decimals:
        return ".3e"
    return f".{decimals}f"


def mean_metrics(results) -> dict:
    names = {k for m in results for k, v in m.items()
             if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return {k: sum(m[k] for m in results) / len(results) for k in names
            if all(k in m for m in results)} if results else {}


def objective_value(metrics, objective) -> float:
    value = metrics.get(objective)
    return float("nan") if value is None else float(value)


# --- The records a report reads -----------------------------------------------


@dataclasses.dataclass
class SweepRecords:
    """A sweep as a report reads it: its plan and its runs so far."""

    path: str
    plan: dict
    executions: object  # pandas DataFrame, one row per run (results_table)
    searched: list  # fields that vary (the rule always)
    tracked: bool  # whether trackers ran

    @property
    def objective(self) -> str:
        return self.plan["objective"]

    @property
    def pinned(self) -> dict:
        """The fields with one value in the sweep."""
        return {name: values[0] for name, values in self.plan["space"].items()
                if len(values) == 1}

    def history_frames(self, trial_id) -> list:
        """The history.csv frames of the trial's finished runs."""
        runs = self.executions[(self.executions["trial_id"] == trial_id)
                               & (self.executions["status"] == "COMPLETED")]
        frames = []
        for _, run in runs.iterrows():
            frame = read_history(os.path.join(
                self.path, "trials", trial_id, f"exec{run['execution']}",
                "history.csv"))
            if frame is not None:
                frames.append(frame)
        return frames


def load_records(sweep_dir: str) -> SweepRecords:
    """The sweep's records, checked as a rerun of the sweep checks them
    (sweep.json, every run's metrics.json and failure.json); refuses a
    folder that is not a sweep or has no run yet."""
    import hparams
    if not os.path.isdir(sweep_dir):
        raise UsageError(f"{sweep_dir}: no such folder")
    plan = read_plan(sweep_dir)
    if plan is None:
        raise UsageError(f"{sweep_dir} is not a sweep folder (no "
                         f"{SWEEP_FILE})")
    check_records(sweep_dir)
    executions = results_table(sweep_dir)
    if executions.empty:
        raise UsageError(f"{sweep_dir}: no trial has started yet")
    space = plan["space"]
    searched = [n for n, v in space.items() if len(v) > 1]
    searched = sorted(set(searched) | {"algorithm"}, key=[*space].index)
    tracked = bool(hparams.FIELDS_BY_NAME["tracker"].parse_set(
        (space.get("tracker") or [""])[0] or ""))
    return SweepRecords(sweep_dir, plan, executions, searched, tracked)


def read_history(path: str):
    """A run's history.csv (None if absent); a damaged one is refused."""
    import pandas as pd
    if not os.path.exists(path):
        return None
    try:
        return pd.read_csv(path)
    except (OSError, ValueError) as error:  # (pandas' parser errors)
        raise UsageError(f"{path} is damaged ({type(error).__name__}); "
                         f"remove the run's folder ({os.path.dirname(path)})"
                         " and rerun the sweep to redo that run") from None
