"""A grid sweep over the fields not pinned on the command line.

    python tune.py --sweep_dir=data/exp --dataset=digits --algorithm=dfa

(`train.bash` wraps this.)  Layout of the sweep folder:

    tuner/                 keras-tuner's oracle and trial records
    trials/<id>/exec<k>/   one train.py run per execution (metrics.json,
                           history.csv, model.keras, tensorboard/)
    results.csv            one row per execution: hyperparameters, metrics

`tensorboard --logdir data/exp/trials` shows every trial.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import hparams as hparams_lib  # noqa: E402
from hparams import UsageError  # noqa: E402

SWEEP_LEVEL = ("objective", "executions_per_trial")  # one value per sweep


def config_is_valid(config) -> bool:
    import train
    try:
        train.check_settings(config)
    except UsageError:
        return False
    return True


def first_problem(space) -> str:
    """Why no configuration of the space is valid."""
    import hypermodels
    import train
    config = next(hypermodels.grid(space))
    try:
        train.check_settings(config)
    except UsageError as error:
        return str(error)
    return "no valid configuration"


def values_hash(values) -> str:
    text = json.dumps(values, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def make_oracle(objective, configs):
    import keras_tuner

    class GridOracle(keras_tuner.Oracle):
        """Walks a fixed list of configurations, skipping those already
        tried (matched by their values, so a rerun never repeats one)."""

        def populate_space(self, trial_id):
            for config in configs:
                if self._compute_values_hash(config) not in \
                        self._tried_so_far:
                    return {"status": "RUNNING", "values": dict(config)}
            return {"status": "STOPPED"}

    direction = "min"
    return GridOracle(objective=keras_tuner.Objective(objective, direction),
                      max_trials=len(configs),
                      max_consecutive_failed_trials=len(configs) + 1)


def make_tuner(hypermodel, oracle, sweep_dir, overwrite=False):
    import keras_tuner

    import train

    class SweepTuner(keras_tuner.engine.base_tuner.BaseTuner):
        """Runs each trial through train.train_and_evaluate, once per
        execution seed; the objective is the mean over executions."""

        def run_trial(self, trial, *args, **kwargs):
            hp = self.hypermodel.build(trial.hyperparameters)
            objective = self.oracle.objective.name
            scores = []
            for execution in range(hp.executions_per_trial):
                run_hp = hp.replace(seed=hp.seed + execution)
                workdir = execution_dir(sweep_dir, trial.trial_id, execution)
                metrics = train.train_and_evaluate(run_hp, workdir,
                                                   verbose=2)
                scores.append(objective_value(metrics, objective))
            return {objective: sum(scores) / len(scores)}

    return SweepTuner(oracle, hypermodel, directory=sweep_dir,
                      project_name="tuner", overwrite=overwrite)


def execution_dir(sweep_dir, trial_id, execution):
    return os.path.join(sweep_dir, "trials", trial_id, f"exec{execution}")


def objective_value(metrics, objective) -> float:
    value = metrics.get(objective)
    return float("nan") if value is None else float(value)


def results_table(sweep_dir, tuner):
    """One row per execution: status, hyperparameters, final metrics."""
    import pandas as pd
    rows = []
    for trial in tuner.oracle.trials.values():
        base = {"trial_id": trial.trial_id, "status": trial.status,
                **trial.hyperparameters.values}
        executions = int(base.get("executions_per_trial", 1))
        for execution in range(executions):
            path = os.path.join(execution_dir(sweep_dir, trial.trial_id,
                                              execution), "metrics.json")
            row = {**base, "execution": execution}
            if os.path.exists(path):
                with open(path) as f:
                    metrics = json.load(f)
                row.update({k: v for k, v in metrics.items()
                            if k != "hparams"})
            elif trial.message:
                row["failure"] = trial.message.strip().splitlines()[-1]
            rows.append(row)
    frame = pd.DataFrame(rows)
    objective = tuner.oracle.objective.name
    if objective in frame:
        frame = frame.sort_values(objective, kind="stable")
    return frame


def show_table(frame, searched) -> str:
    metrics = [c for c in ("loss", "val_loss", "test_loss", "test_accuracy",
                           "train_seconds", "failure") if c in frame]
    columns = ["trial_id", "execution", "status", *searched, *metrics]
    return frame[[c for c in columns if c in frame]].to_string(
        index=False, float_format=lambda v: f"{v:.4g}")


def run_sweep(given, sweep_dir, verbose=True):
    """Validates the sweep, runs the trials not yet done, writes results."""
    import atomic
    import dataloader
    import hypermodels
    for name in SWEEP_LEVEL:
        if len(given.get(name, ())) > 1:
            raise UsageError(f"--{name} takes one value per sweep")
    space = hparams_lib.search_space(given)
    configs = list(hypermodels.grid(space, config_is_valid))
    if not configs:
        raise UsageError(f"no valid configuration to run: {first_problem(space)}")
    for dataset in sorted({c["dataset"] for c in configs}):
        dataloader.load_arrays({**configs[0], "dataset": dataset})
    hypermodel = hypermodels.ProjectionHyperModel(space)
    created = not os.path.exists(sweep_dir)
    try:
        tuner = make_tuner(hypermodel, make_oracle(space["objective"][0],
                                                   configs), sweep_dir)
    except Exception:
        if created:
            shutil.rmtree(sweep_dir, ignore_errors=True)
        raise
    if verbose:
        print(f"Sweep {sweep_dir}: {len(configs)} configuration(s) over "
              f"{', '.join(hypermodel.searched()) or 'nothing'}",
              flush=True)
    tuner.search()
    frame = results_table(sweep_dir, tuner)
    atomic.write_csv(os.path.join(sweep_dir, "results.csv"), frame)
    if verbose:
        print(show_table(frame, hypermodel.searched()))
        print(f"Results: {os.path.join(sweep_dir, 'results.csv')}")
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
