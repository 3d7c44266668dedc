"""A sweep's results table: one row per execution, built from the trial
folders alone (so it works while a sweep runs, after it was interrupted,
and whichever process of a parallel sweep ran each trial), written to
results.csv after every trial.
"""

from __future__ import annotations

import os

from errors import UsageError
from sweep_plan import SWEEP_FILE, Sweep, execution_dir, read_plan

RESULTS_FILE = "results.csv"


def read_json(path):
    """A run's record (None if absent); a damaged one is refused."""
    import folders
    return folders.read_record(path)


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


def mean_metrics(results) -> dict:
    names = {k for m in results for k, v in m.items()
             if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return {k: sum(m[k] for m in results) / len(results) for k in names
            if all(k in m for m in results)} if results else {}


def objective_value(metrics, objective) -> float:
    value = metrics.get(objective)
    return float("nan") if value is None else float(value)
