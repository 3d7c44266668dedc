"""One training run: `train_and_evaluate(hparams, workdir)` and its CLI.

    python train.py --dataset=mnist --algorithm=dfa --arch=256-256 \\
        --epochs=2 --workdir=runs/dfa

writes, in the workdir: metrics.json (final train/test metrics and the run's
hyperparameters), history.csv (one row per epoch), model.keras (the trained
model, feedback matrices included) and tensorboard/ logs.  A tuner trial
goes through the same `train_and_evaluate`.
"""

from __future__ import annotations

import os
import shutil
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import hparams as hparams_lib  # noqa: E402
from hparams import UsageError  # noqa: E402


def make_optimizer(name, learning_rate, weight_decay):
    import keras
    decay = weight_decay or None
    makers = {
        "adam": lambda: keras.optimizers.Adam(learning_rate,
                                              weight_decay=decay),
        "sgd": lambda: keras.optimizers.SGD(learning_rate,
                                            weight_decay=decay),
        "nesterov": lambda: keras.optimizers.SGD(
            learning_rate, momentum=0.9, nesterov=True, weight_decay=decay),
    }
    if name not in makers:
        raise UsageError(f"unknown optimizer '{name}' "
                         f"(valid: {', '.join(makers)})")
    return makers[name]()


def check_settings(hp) -> None:
    """Every refusal that needs no data, before anything is written."""
    import projection
    hparams_lib.check(hp)
    projection.get(hp["algorithm"]).check_settings(hp)


def build_model(hp, input_shape, target_dim, steps_per_epoch=1):
    """The compiled model of a configuration (single runs and trials)."""
    import keras
    from model import ProjectionModel
    import projection
    check_settings(hp)
    for warning in projection.get(hp["algorithm"]).warnings(hp):
        print(f"warning: {warning}", file=sys.stderr)
    keras.utils.set_random_seed(hp["seed"])
    model = ProjectionModel(
        arch=hp["arch"], algorithm=hp["algorithm"], target_dim=target_dim,
        problem_type=hp["problem_type"], input_shape=input_shape,
        activation=hp["activation"], batch_norm=hp["batch_norm"],
        dropout=hp["dropout"], bw_init=hp["bw_init"],
        use_bias=hp["use_bias"], scaler=hp["scaler"], seed=hp["seed"])
    model.build()
    feedback_optimizer = None
    if model.learned_feedback:
        # The references decay the feedback learning rate once per epoch.
        schedule = keras.optimizers.schedules.ExponentialDecay(
            hp["fb_lr"], decay_steps=max(steps_per_epoch, 1),
            decay_rate=hp["fb_lr_decay"], staircase=True)
        feedback_optimizer = make_optimizer(hp["fb_optimizer"], schedule,
                                            hp["fb_weight_decay"])
    model.compile(
        optimizer=make_optimizer(hp["optimizer"], hp["lr"],
                                 hp["weight_decay"]),
        feedback_optimizer=feedback_optimizer, jit_compile=hp["use_xla"],
        steps_per_execution=hp["steps_per_execution"])
    return model


def train_and_evaluate(hp, workdir, verbose="auto", callbacks=()):
    """Trains one configuration into `workdir`; returns its metrics."""
    import atomic
    import dataloader
    hparams_lib.check(hp)
    dataloader.load_arrays(hp)  # a missing file is refused before TF loads
    import keras
    check_settings(hp)
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
    start = time.time()
    history = model.fit(
        data.train, epochs=hp["epochs"], validation_data=data.validation,
        shuffle=False,  # the pipeline shuffles, seeded
        verbose=verbose, callbacks=[
            keras.callbacks.TerminateOnNaN(),
            keras.callbacks.CSVLogger(os.path.join(workdir, "history.csv")),
            keras.callbacks.TensorBoard(os.path.join(workdir, "tensorboard"),
                                        write_graph=False),
            *callbacks])
    train_seconds = time.time() - start
    metrics = final_metrics(model, data, history)
    metrics.update(train_seconds=round(train_seconds, 2),
                   epochs_run=len(history.epoch), hparams=dict(hp))
    with atomic.replacing(os.path.join(workdir, "model.keras"),
                          suffix=".keras") as tmp:
        model.save(tmp)
    atomic.write_json(os.path.join(workdir, "metrics.json"), metrics)
    return metrics


def final_metrics(model, data, history) -> dict:
    """Train (inference mode), validation and test metrics after training."""
    metrics = {}
    splits = {"train": data.train, "val": data.validation, "test": data.test}
    for split, ds in splits.items():
        if ds is None:
            continue
        values = model.evaluate(ds, verbose=0, return_dict=True)
        prefix = "" if split == "train" else f"{split}_"
        metrics.update({f"{prefix}{k}": float(v) for k, v in values.items()})
    if not model.classify:
        metrics["mean_image_test_loss"] = data.mean_image_test_loss
    metrics["diverged"] = bool(model.stop_training and any(
        v != v for v in history.history.get("loss", [])[-1:]))
    return metrics


def main(flag_values):
    workdir = flag_values.workdir
    if not workdir:
        raise UsageError("--workdir is required (where the run writes its "
                         "results)")
    hp = hparams_lib.single_run(
        hparams_lib.given_on_command_line(flag_values))
    metrics = train_and_evaluate(hp, workdir)
    shown = {k: round(v, 4) for k, v in metrics.items()
             if k.startswith("test_") and isinstance(v, float)}
    print(f"{workdir}: {shown}")


FLAGS = {"workdir": "Where the run writes its results."}

if __name__ == "__main__":
    import cli
    sys.exit(cli.run(sys.argv, main, FLAGS))
