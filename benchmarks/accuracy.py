"""Test accuracy of the rules on MNIST and Fashion-MNIST → docs/RESULTS.md.

    .venv/bin/python benchmarks/accuracy.py --data_dir=../shared/data
    .venv/bin/python benchmarks/accuracy.py --data_dir=../shared/data --quick

Two parts, both through `train.train_and_evaluate` (the path of every
single run and tuner trial):

1. A published setting: feedback alignment on MNIST, 784-128-64-10 ReLU,
   Adam 3e-4, batch 64, 10 epochs, test accuracy after epochs 1, 5 and 10
   (published: 88.4 / 94.1 / 95.9 %).
2. All nine rules on MNIST and Fashion-MNIST with one shared setting
   (256-256 tanh, Adam 1e-3, batch 64, 3 epochs), several seeds, mean ± std.
3. All nine rules on a small CNN (16C5-P2-64, tanh, Adam 1e-3, batch 64,
   one epoch of MNIST) at the framework's defaults otherwise, as
   `train.py` runs it (the setting of issue 3's conv acceptance), with
   inputs in [0, 1] (the default) and in [-1, 1].

4. Every rule on the token presets `vit_mnist` and `mixer_mnist` (Adam
   1e-3 annealed by a cosine to 0, batch 64, 10 epochs, no batch norm),
   at `--feedback_points=block`, and dfa at `sublayer` too (issue 21).
5. Every rule for one epoch on the shared dense setting (part 2's) and on
   the FDFA reference's MNIST CNN with its recipe: one table, a column
   per rule (issue 22); a rule refused by a setting gets the refusal.

Parts 1, 2, 4 and 5 train on the whole training split (objective=loss: nothing
is held out for validation); part 3 keeps the defaults (10 % held out,
objective val_loss).  Every run is tested on the 10,000
test images.  Runs are
kept under --workdir (one folder each); a finished run whose settings match
is reused, so an interrupted benchmark resumes.  The report, with the exact
command at its top, is written atomically to --out.  --quick (one seed, one
epoch, 10 % of the training images, FA for 2 epochs) checks the machinery
in a few minutes and writes runs/accuracy_quick/RESULTS.md unless --out is
given.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from runtime import quiet  # noqa: E402

quiet.install()  # TensorFlow's start-up lines hidden, as in train.py

import datasets  # noqa: E402
import hparams as hparams_lib  # noqa: E402
import references  # noqa: E402  (benchmarks/references.py)
from accuracy_report import CONV_SCALERS, DATASETS  # noqa: E402
from references import (  # noqa: E402
    FA_SETTING, PUBLISHED_FA, SHARED_SETTING, TOKEN_SETTING)
from results_document import report  # noqa: E402

# Every other field at its default: the run `train.py` makes from these
# flags alone, with each of the two input scalings.
CONV_SETTING = dict(dataset="mnist", arch="16C5-P2-64", activation="tanh",
                    optimizer="adam", lr=1e-3, batch_size=64, epochs=1)
# Train on all training images: no validation split.
WHOLE_TRAINING_SPLIT = dict(objective="loss", validation_frac=0.0)


# The seeds argument of each part but the first two: (default, what).
PART_SEEDS = {
    "conv_seeds": (3, "the conv comparison"),
    "fdfa_seeds": (3, "the FDFA reference's MNIST setting"),
    "fdfa_conv_seeds": (1, "every rule on the FDFA reference's MNIST CNN "
                        "with its recipe"),
    "token_seeds": (1, "every rule on vit_mnist and mixer_mnist"),
    "every_rule_seeds": (1, "every rule, 1 epoch, on the shared dense "
                         "setting and fdfa_conv_mnist"),
}


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=os.environ.get(
        datasets.DATA_DIR_ENV, os.path.join(ROOT, "..", "shared", "data")),
        help="folder with mnist.npz and fashion-mnist/")
    parser.add_argument("--workdir", default="",
                        help="where runs are kept (default runs/accuracy, "
                        "runs/accuracy_quick with --quick)")
    parser.add_argument("--out", default="", help="the report (default "
                        "docs/RESULTS.md, runs/accuracy_quick/RESULTS.md "
                        "with --quick)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--fa_seeds", type=int, default=3,
                        help="seeds of the published FA setting")
    parser.add_argument("--epochs", type=int,
                        default=SHARED_SETTING["epochs"],
                        help="epochs of the nine-rule comparison")
    for name, (default, what) in PART_SEEDS.items():
        parser.add_argument(f"--{name}", type=int, default=default,
                            help=f"seeds of {what} (0: skip it)")
    parser.add_argument("--token_archs",
                        default=",".join(references.NAKAJIMA_MNIST),
                        help="the token presets of that part")
    parser.add_argument("--rules", default=",".join(hparams_lib.ALGORITHMS))
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    args.rules = [r for r in args.rules.split(",") if r]
    args.datasets = [d for d in args.datasets.split(",") if d]
    args.examples_frac = 1.0
    args.fa_epochs = FA_SETTING["epochs"]
    args.token_epochs = TOKEN_SETTING["epochs"]
    if args.quick:
        for part in ("seeds", "fa_seeds", *PART_SEEDS):
            setattr(args, part, min(getattr(args, part), 1))
        args.epochs, args.fa_epochs, args.examples_frac = 1, 2, 0.1
        args.token_epochs = 1
    folder = "accuracy_quick" if args.quick else "accuracy"
    args.workdir = args.workdir or os.path.join(ROOT, "runs", folder)
    args.out = args.out or (os.path.join(ROOT, "runs", folder, "RESULTS.md")
                            if args.quick
                            else os.path.join(ROOT, "docs", "RESULTS.md"))
    return args


# --- Runs -------------------------------------------------------------------


def test_accuracy_at(epochs, test_data, record):
    """A callback that evaluates the test split after the given epochs."""
    import keras

    class TestAccuracyAt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch + 1 in epochs:
                values = self.model.evaluate(test_data, verbose=0,
                                             return_dict=True)
                record[epoch + 1] = values["accuracy"]

    return TestAccuracyAt()


def run(hp, workdir, test_epochs=()):
    """Final metrics of one run (plus test accuracy after `test_epochs`,
    under "test_accuracy_by_epoch"), reusing a finished identical run."""
    from runtime import atomic
    import train
    done = os.path.join(workdir, "metrics.json")
    extra = os.path.join(workdir, "test_accuracy_by_epoch.json")
    if os.path.exists(done):
        with open(done) as f:
            metrics = json.load(f)
        if not same_settings(metrics.get("hparams", {}), hp):
            raise hparams_lib.UsageError(
                f"{workdir} holds a run with other settings; remove it or "
                "pass another --workdir")
        if not test_epochs or os.path.exists(extra):
            return with_by_epoch(metrics, extra)
        raise hparams_lib.UsageError(f"{workdir} lacks {extra}; remove it")
    callbacks, by_epoch = [], {}
    if test_epochs:
        import dataloader
        callbacks.append(test_accuracy_at(set(test_epochs),
                                          dataloader.load(hp).test, by_epoch))
    metrics = train.train_and_evaluate(hp, workdir, verbose=0,
                                       callbacks=callbacks)
    if test_epochs:
        atomic.write_json(extra, {str(k): v for k, v in by_epoch.items()})
    return with_by_epoch(metrics, extra)


def same_settings(recorded: dict, hp) -> bool:
    """Whether a finished run had the settings `hp`: fields added to
    hparams.py since it ran count as equal when `hp` keeps their default
    (the behaviour the run had).  Where, not what (data_dir), is ignored."""
    defaults = hparams_lib.defaults()
    for name, value in hp.items():
        if name in hparams_lib.LOCATION_FIELDS:
            continue
        if recorded.get(name, defaults[name]) != value:
            return False
    return True


def with_by_epoch(metrics, path):
    if os.path.exists(path):
        with open(path) as f:
            metrics["test_accuracy_by_epoch"] = {
                int(k): v for k, v in json.load(f).items()}
    return metrics


def progress(label, metrics, started):
    print(f"{label}: test accuracy {100 * metrics['test_accuracy']:.2f} % "
          f"({time.time() - started:.0f} s so far)", flush=True)


def published_fa(args, started):
    """[metrics] of the FA runs, one per seed."""
    results = []
    for seed in range(args.fa_seeds):
        hp = hparams_lib.make(**{**FA_SETTING, "epochs": args.fa_epochs},
                              **WHOLE_TRAINING_SPLIT, seed=seed,
                              data_dir=args.data_dir,
                              examples_frac=args.examples_frac)
        workdir = os.path.join(args.workdir, "published_fa", f"seed{seed}")
        metrics = run(hp, workdir, test_epochs=sorted(PUBLISHED_FA))
        progress(f"fa published setting, seed {seed}", metrics, started)
        results.append(metrics)
    return results


def nine_rules(args, started):
    """{dataset: {rule: [metrics per seed]}}."""
    results = {}
    for dataset in args.datasets:
        setting = {**SHARED_SETTING, **WHOLE_TRAINING_SPLIT,
                   "epochs": args.epochs, "dataset": dataset}
        results[dataset] = rules_by_seed(
            args, started, setting, args.seeds,
            os.path.join(args.workdir, dataset), dataset)
    return results


def conv_rules(args, started):
    """{scaler: {rule: [metrics per seed]}} in the conv setting."""
    return {scaler: rules_by_seed(
                args, started, {**CONV_SETTING, "scaler": scaler},
                args.conv_seeds, os.path.join(args.workdir, f"conv_{scaler}"),
                f"conv {scaler}")
            for scaler in CONV_SCALERS}


def fdfa_reference(args, started):
    """{rule: [metrics per seed]} in the FDFA reference's MNIST setting."""
    results = {}
    for rule in references.FDFA_MNIST_REFERENCE:
        for seed in range(args.fdfa_seeds):
            setting = references.fdfa_mnist(rule)
            if args.quick:
                setting.update(epochs=1)
            hp = hparams_lib.make(**setting, seed=seed,
                                  data_dir=args.data_dir,
                                  examples_frac=args.examples_frac)
            metrics = run(hp, os.path.join(args.workdir, "fdfa_mnist", rule,
                                           f"seed{seed}"))
            progress(f"fdfa reference setting {rule} seed {seed}", metrics,
                     started)
            results.setdefault(rule, []).append(metrics)
    return results


def fdfa_conv(args, started):
    """{rule: [metrics per seed]}: every rule on the FDFA reference's MNIST
    CNN with its recipe, one epoch."""
    results = {}
    for rule in args.rules:
        for seed in range(args.fdfa_conv_seeds):
            hp = hparams_lib.make(**references.fdfa_conv_mnist(rule),
                                  seed=seed, data_dir=args.data_dir,
                                  examples_frac=args.examples_frac)
            metrics = run(hp, os.path.join(args.workdir, "fdfa_conv_mnist",
                                           rule, f"seed{seed}"))
            progress(f"fdfa_conv_mnist {rule} seed {seed}", metrics, started)
            results.setdefault(rule, []).append(metrics)
    return results


def rules_by_seed(args, started, setting, seeds, folder, label, rules=None):
    """{rule: [metrics per seed]} of `setting` for every rule (of
    --rules, or `rules`)."""
    results = {}
    for rule in rules or args.rules:
        for seed in range(seeds):
            hp = hparams_lib.make(**setting, algorithm=rule, seed=seed,
                                  data_dir=args.data_dir,
                                  examples_frac=args.examples_frac)
            metrics = run(hp, os.path.join(folder, rule, f"seed{seed}"))
            progress(f"{label} {rule} seed {seed}", metrics, started)
            results.setdefault(rule, []).append(metrics)
    return results


def token_rules(args, started):
    """{arch: {rule: [metrics per seed]}}: every rule at block placement,
    and "dfa, sublayer"."""
    results = {}
    setting = {**TOKEN_SETTING, **WHOLE_TRAINING_SPLIT,
               "epochs": args.token_epochs}
    for arch in args.token_archs.split(","):
        folder = os.path.join(args.workdir, "tokens", arch)
        results[arch] = rules_by_seed(args, started, {**setting, "arch": arch},
                                      args.token_seeds, folder, arch)
        if "dfa" in args.rules:
            results[arch]["dfa, sublayer"] = rules_by_seed(
                args, started,
                {**setting, "arch": arch, "feedback_points": "sublayer"},
                args.token_seeds, os.path.join(folder, "sublayer"),
                f"{arch} sublayer", rules=["dfa"])["dfa"]
    return results


def every_rule(args, started):
    """{setting: {rule: [metrics per seed], or the line refusing it}}:
    every rule for one epoch on the shared dense setting and on the FDFA
    reference's CNN with its recipe (issue 22's 15-column table)."""
    dense = {**SHARED_SETTING, **WHOLE_TRAINING_SPLIT, "epochs": 1,
             "dataset": "mnist"}
    settings = {"dense": lambda rule: dict(dense, algorithm=rule),
                "fdfa_conv_mnist": references.fdfa_conv_mnist}
    results = {}
    for name, setting_of in settings.items():
        results[name] = {}
        for rule in args.rules:
            for seed in range(args.every_rule_seeds):
                try:
                    hp = hparams_lib.make(**setting_of(rule), seed=seed,
                                          data_dir=args.data_dir,
                                          examples_frac=args.examples_frac)
                except hparams_lib.UsageError as refusal:
                    results[name][rule] = str(refusal)
                    break
                metrics = run(hp, os.path.join(
                    args.workdir, "every_rule", name, rule, f"seed{seed}"))
                progress(f"{name} {rule} seed {seed}", metrics, started)
                results[name].setdefault(rule, []).append(metrics)
    return results


PARTS = {  # name: (its seeds' argument, the function that runs it)
    "fdfa": ("fdfa_seeds", fdfa_reference),
    "fdfa_conv": ("fdfa_conv_seeds", fdfa_conv),
    "fa": ("fa_seeds", published_fa),
    "rules": ("seeds", nine_rules),
    "conv": ("conv_seeds", conv_rules),
    "tokens": ("token_seeds", token_rules),
    "every_rule": ("every_rule_seeds", every_rule),
}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    started = time.time()
    parts = {name: run_part(args, started)
             for name, (seeds, run_part) in PARTS.items()
             if getattr(args, seeds)}
    from runtime import atomic
    old = ""
    if os.path.exists(args.out):
        with open(args.out) as f:
            old = f.read()
    atomic.write_text(args.out, report(args, argv, parts,
                                       time.time() - started, old))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except hparams_lib.UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
