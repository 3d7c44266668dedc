"""One training run: `train_and_evaluate(hparams, workdir)` and its CLI.

    python train.py --dataset=mnist --algorithm=dfa --arch=256-256 \\
        --epochs=2 --workdir=runs/dfa

writes, in the workdir: metrics.json (final train/test metrics and the run's
hyperparameters), history.csv (one row per epoch), model.keras (the trained
model, feedback matrices included) and tensorboard/ logs.  A tuner trial
goes through the same `train_and_evaluate`.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import hparams as hparams_lib  # noqa: E402
from runtime.errors import RunFailed, UsageError  # noqa: E402


def build_model(hp, input_shape, target_dim, steps_per_epoch=1):
    """The compiled model of a configuration (single runs and trials)."""
    import keras
    from model import ProjectionModel
    import optimizers
    import projection
    hparams_lib.check(hp)
    for warning in projection.get(hp["algorithm"]).warnings(hp):
        print(f"warning: {warning}", file=sys.stderr)
    seed_everything_but_tensorflow(hp["seed"])
    model = ProjectionModel(
        arch=hp["arch"], algorithm=hp["algorithm"], target_dim=target_dim,
        problem_type=hp["problem_type"], input_shape=input_shape,
        activation=hp["activation"], batch_norm=hp["batch_norm"],
        dropout=hp["dropout"], bw_init=hp["bw_init"],
        use_bias=hp["use_bias"], scaler=hp["scaler"], seed=hp["seed"],
        init=hp["init"], bn_momentum=hp["bn_momentum"],
        bn_epsilon=hp["bn_epsilon"], precision=hp["precision"],
        feedback_points=hp["feedback_points"],
        fg_directions=hp["fg_directions"])
    model.build()
    schedules = learning_rates(hp, steps_per_epoch)
    feedback_optimizer = None
    if model.learned_feedback:
        feedback_optimizer = optimizers.make(
            hp["fb_optimizer"], schedules["fb_lr"], hp["fb_weight_decay"],
            hp["momentum"], hp["adam_epsilon"])
    # Under mixed_float16 Keras' compile wraps the optimizer in a
    # LossScaleOptimizer (dynamic loss scaling, model.py).
    model.compile(
        optimizer=optimizers.make(hp["optimizer"], schedules["lr"],
                                  hp["weight_decay"], hp["momentum"],
                                  hp["adam_epsilon"]),
        feedback_optimizer=feedback_optimizer, jit_compile=hp["use_xla"],
        steps_per_execution=hp["steps_per_execution"])
    # The optimizers' slots now, not in the first trace of the train step:
    # a tf.function whose first trace creates variables traces it again.
    model.build_optimizers()
    import trackers
    trackers.attach(model, hp, steps_per_epoch)  # --tracker; none: no-op
    return model


def seed_everything_but_tensorflow(seed: int) -> None:
    """keras.utils.set_random_seed (Python, NumPy, Keras' global seed
    generator: what the initializers draw from) less TensorFlow's global
    seed.  No TF op here draws from that seed (every one takes an explicit,
    stateless seed), and setting it clears TensorFlow's kernel caches: the
    compiled steps a later trial reuses (step_cache.py) would be
    re-instantiated, 0.15 s a trial under XLA, 0.6 s without."""
    from unittest import mock

    import keras
    import tensorflow as tf
    with mock.patch.object(tf.random, "set_seed", lambda _: None):
        keras.utils.set_random_seed(seed)


def learning_rates(hp, steps_per_epoch=1) -> dict:
    """{"lr": the forward schedule, "fb_lr": the feedback schedule}, each an
    optimizers.EpochSchedule.  The feedback matrices keep their own
    per-epoch decay (the references decay it once per epoch)."""
    import optimizers
    return {
        "lr": optimizers.EpochSchedule(
            hp["lr"], steps_per_epoch, hp["lr_schedule"], hp["epochs"],
            hp["warmup_epochs"], hp["lr_decay"], hp["lr_decay_epochs"]),
        "fb_lr": optimizers.EpochSchedule(
            hp["fb_lr"], steps_per_epoch, "step", hp["epochs"],
            decay=hp["fb_lr_decay"], decay_epochs=1)}


@dataclasses.dataclass(frozen=True)
class RunLogs:
    """Where a run logs for TensorBoard, and what it shows while it runs."""

    # Its TensorBoard run and HParams session (default <workdir>/tensorboard;
    # a sweep's execution: trials/<trial>/<rule,values>/exec<k>).
    tensorboard: str | None = None
    session_group: str | None = None  # its HParams row: the trial's name
    progress: bool = False  # progress.py: a line per epoch, live on a tty
    single_run: bool = True  # (a single run keeps its epoch lines on a tty)

    def logdir(self, workdir) -> str:
        return self.tensorboard or os.path.join(workdir, "tensorboard")


def check_not_finished(workdir) -> None:
    if os.path.exists(os.path.join(workdir, "metrics.json")):
        raise UsageError(f"{workdir} already holds a finished run "
                         "(metrics.json); choose another --workdir")


def train_and_evaluate(hp, workdir, verbose="auto", callbacks=(),
                       logs=RunLogs()):
    """Trains one configuration into `workdir`; returns its metrics.

    A workdir left by a killed run resumes from its last finished epoch;
    one that holds a finished run is refused (nothing is overwritten).
    `verbose`: Keras' fit verbosity; `logs`: its TensorBoard session and
    progress lines (RunLogs)."""
    from runtime import atomic
    import dataloader
    import datasets
    from runtime import faults
    from runtime import folders
    from runtime import step_cache
    logs = logs or RunLogs()
    hparams_lib.check(hp)
    folders.check_writable(workdir, "--workdir")
    check_not_finished(workdir)
    datasets.load_arrays(hp)  # a missing file is refused before TF loads
    data = dataloader.load(hp)  # nothing is written before this
    created = not os.path.exists(workdir)
    os.makedirs(workdir, exist_ok=True)
    try:
        model = build_model(hp, data.input_shape, data.target_dim,
                            data.steps_per_epoch)
    except UsageError:
        if created:
            shutil.rmtree(workdir, ignore_errors=True)
        raise
    graph = step_cache.key(hp, data)
    model = step_cache.take(graph, model)  # compiled steps of a past trial
    history = fit(model, data, hp, workdir, verbose, callbacks, logs)
    metrics = final_metrics(model, data, history)
    metrics.update(hparams=dict(hp))
    atomic.save_model(model, os.path.join(workdir, "model.keras"))
    faults.point("run_end")
    atomic.write_json(os.path.join(workdir, "metrics.json"), metrics)
    end_session(logs, workdir, failed=metrics["diverged"])
    shutil.rmtree(os.path.join(workdir, "backup"), ignore_errors=True)
    step_cache.keep(graph, model)
    from runtime import xla_cache
    xla_cache.publish()  # what this run compiled, for later processes
    return metrics


def end_session(logs: RunLogs, workdir, failed=False) -> None:
    """The run's HParams session ends (its status), if it began."""
    logdir = (logs or RunLogs()).logdir(workdir)
    if os.path.isdir(logdir):
        import tensorboard_hparams
        tensorboard_hparams.end_session(logdir, failed=failed)


def fit(model, data, hp, workdir, verbose, callbacks, logs: RunLogs):
    """model.fit with the logging, progress and crash-resume callbacks;
    returns the run's whole history (all attempts) as a DataFrame."""
    import keras

    import tensorboard_hparams
    from runtime import faults
    import optimizers
    from runtime import resume
    import trackers
    schedules = learning_rates(hp, data.steps_per_epoch)
    if not model.learned_feedback:
        del schedules["fb_lr"]
    times = resume.CallTimes()
    backup = resume.AtomicBackupAndRestore(os.path.join(workdir, "backup"),
                                           times)
    start_epoch = backup.restored_epoch()
    history_csv = os.path.join(workdir, "history.csv")
    logdir = logs.logdir(workdir)
    if start_epoch == 0:  # leftovers of an attempt that finished no epoch
        for stale in (history_csv, logdir):
            if os.path.isdir(stale):
                shutil.rmtree(stale)
            elif os.path.exists(stale):
                os.remove(stale)
    tensorboard_hparams.start_session(logdir, dict(hp), logs.session_group or
                        os.path.basename(os.path.abspath(workdir)))
    resume.log_attempt(workdir, start_epoch)
    model.fit(
        data.train, epochs=hp["epochs"], validation_data=data.validation,
        shuffle=False,  # the pipeline shuffles, by (seed, epoch)
        verbose=verbose, callbacks=[
            resume.StopOnNaN(),
            resume.EpochOrder(data),
            keras.callbacks.LambdaCallback(**times.hooks()),
            optimizers.LearningRateLog(schedules),  # before the loggers
            keras.callbacks.CSVLogger(history_csv, append=True),
            trackers.TensorBoard(  # Keras' callback, tracker tags kept
                logdir, sample=data.test, write_graph=False,
                histogram_freq=(hp.get("histogram_freq", 1)
                                if model.diagnostics is not None
                                and model.diagnostics.histograms else 0)),
            *callbacks,
            *([resume.BatchFaultPoint()] if faults.armed() else []),
            *([keras.callbacks.LambdaCallback(**progress_of(
                hp, data, logs).hooks())] if logs.progress else []),
            backup])  # last: an epoch is backed up once it is logged
    return resume.tidy_history(history_csv, backup.seconds())


def progress_of(hp, data, logs: RunLogs):
    from runtime import progress
    return progress.for_run(hp["epochs"], data.steps_per_epoch,
                            single_run=logs.single_run)


def final_metrics(model, data, history) -> dict:
    """Train (inference mode), validation and test metrics after training,
    and whether (and when) the loss diverged."""
    metrics = {}
    # One fixed order of the training batches, whatever epoch the run ended
    # in: a run resumed after its last backup trains no epoch, and a sum
    # over batches in another order differs in its last bits.
    data.set_epoch(0)
    splits = {"train": data.train, "val": data.validation, "test": data.test}
    for split, ds in splits.items():
        if ds is None:
            continue
        values = model.evaluate(ds, verbose=0, return_dict=True)
        prefix = "" if split == "train" else f"{split}_"
        metrics.update({f"{prefix}{k}": float(v) for k, v in values.items()})
    if not model.classify:
        metrics["mean_image_test_loss"] = data.mean_image_test_loss
    import numpy as np
    losses = history["loss"].to_numpy(dtype=float) if "loss" in history \
        else np.array([])
    bad = np.flatnonzero(~np.isfinite(losses))
    metrics["diverged"] = bool(bad.size)
    if bad.size:
        metrics["diverged_reason"] = (
            f"diverged: training loss became {losses[bad[0]]} in epoch "
            f"{int(history['epoch'].iloc[bad[0]]) + 1} (TerminateOnNaN "
            "stopped it)")
    metrics["epochs_run"] = int(len(history))
    # Training time without the first epoch's compiles (resume.CallTimes),
    # so that two executions of one configuration compare.
    wall, compiling = history.attrs["seconds"]
    metrics["train_seconds"] = round(float(wall - compiling), 2)
    metrics["compile_seconds"] = round(float(compiling), 2)
    return metrics


def main(flag_values):
    from runtime import progress
    from runtime import quiet
    workdir = flag_values.workdir
    if not workdir:
        raise UsageError("--workdir is required (where the run writes its "
                         "results)")
    import cli
    hp = hparams_lib.single_run(cli.given_on_command_line(flag_values))
    check_not_finished(workdir)  # (at once, before TensorFlow loads)
    progress.run_started(workdir)
    # Quiet: a line per epoch (progress.py); -v: Keras' own progress bar
    # on a terminal, else its epoch lines, trackers included.
    details = quiet.verbose()
    metrics = train_and_evaluate(
        hp, workdir, verbose=(("auto" if sys.stdout.isatty() else 2)
                              if details else 0),
        logs=RunLogs(progress=not details))
    if metrics["diverged"]:
        raise RunFailed(f"{workdir}: the run {metrics['diverged_reason']}; "
                        "its files are kept (try a lower --lr)")
    shown = {k: round(v, 4) for k, v in metrics.items()
             if k.startswith("test_") and isinstance(v, float)}
    print(f"{workdir}: {shown}")


FLAGS = {"workdir": "Where the run writes its results."}

if __name__ == "__main__":
    import cli
    cli.exit_with(cli.run(sys.argv, main, FLAGS))
