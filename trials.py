"""A trial of a sweep: its executions (one run per seed, through
`train.train_and_evaluate`, the path of a single run), the lines it prints
and its TensorBoard sessions.  grid_search.SweepTuner runs it."""

from __future__ import annotations

import os
import time
import traceback

from runtime.errors import storage_error
from hparams import value_text
from sweep_plan import Sweep, execution_dir
from runtime.folders import read_json
from sweep_results import finished_trials, mean_metrics, objective_value


def run_trial(sweep: Sweep, hp, verbose, announce=False, workers=1) -> dict:
    """Every execution seed of one configuration; a failed one fails the
    trial with its reason.  Executions already finished are read, not
    rerun.  `announce`: one line when it starts, one per epoch (a live line
    on a terminal: progress.py), one when it ends."""
    import keras_tuner
    from runtime import progress
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
    import tensorboard_hparams
    return os.path.join(sweep.trial_dir(index),
                        tensorboard_hparams.session_name(hp, sweep.searched),
                        f"exec{execution}")


def describe(hp, searched) -> str:
    """The searched values of a configuration (its rule if none is)."""
    return " ".join(f"{n}={value_text(hp[n])}" for n in searched) or \
        f"algorithm={hp['algorithm']}"


def run_execution(hp, workdir, verbose, logs=None):
    """(metrics, failure reason or None) of one run, reusing a finished
    one.  A failure is written to failure.json before it is reported."""
    from runtime import atomic
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
            from runtime import quiet
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
