"""What a trial spends before (and around) its training steps, and what a
sweep spends between trials.

    .venv/bin/python benchmarks/startup.py
    .venv/bin/python benchmarks/startup.py --arch=256-256 --examples_frac=1
    .venv/bin/python benchmarks/startup.py --repo=/tmp/old-checkout
    .venv/bin/python benchmarks/startup.py --before=/tmp/old-checkout

Runs, in this one fresh process, `--trials` 1-epoch trials of one
configuration (by default the trials of README's acceptance sweep: MNIST,
784-256-10, a fifth of the training split; each trial another learning
rate, as in a sweep) through `train.train_and_evaluate`, then a small sweep
of `--sweep_trials` trials through `tune.run_sweep`.  Every phase is timed
from outside, with wrappers around `dataloader.load`, `train.build_model`
and `train.final_metrics` and a Keras callback, so the same script measures
an older checkout (`--repo`: the repository to import; its own code is not
changed) and the before/after comparison runs on one machine:

  imports        import tensorflow, keras and the framework (once per
                 process, not per trial)
  data           dataloader.load: subset, scaling, pipelines
  build          train.build_model: layers, optimizers, compile()
  fit set-up     from build_model's end to the first training batch:
                 callbacks, backup restore, TensorBoard writers
  first compile  the first execution (steps_per_execution steps) less a
                 steady one: tracing and the XLA compile of the train step
  last compile   the epoch's last execution (its smaller last batch) less
                 what its steps cost at the steady rate
  eval compile   final evaluations (train, validation, test) less the same
                 evaluations run again once compiled
  start-up       the sum of the four above plus data, build and fit set-up
  train          the steady training steps; eval: the evaluations, warm
  end            saving: model.keras, metrics.json, backups' removal

and prints one row per trial with the start-up's share of the trial's wall
time.  For the sweep it prints the time from `run_sweep`'s call to the
first trial, between trials (keras-tuner's bookkeeping, results.csv,
TensorBoard sessions) and after the last.  Timings are wall-clock: run it
on a quiet machine and compare runs of the same command.

`--before=DIR` compares that checkout with this one in one run, each in
fresh processes with XLA's cache cold, then warm: startup_compare.py.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BEGAN = time.perf_counter()


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", default=HERE,
                        help="the checkout to measure (default: this one)")
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--data_dir", default=os.path.join(
        os.path.dirname(HERE), "shared", "data"))
    parser.add_argument("--arch", default="256")
    parser.add_argument("--algorithm", default="dfa")
    parser.add_argument("--examples_frac", type=float, default=0.2)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=1,
                        help="epochs per trial (more than 1: each "
                        "epoch's wall time, the first from fit's start, "
                        "is printed)")
    parser.add_argument("--lrs", default="1e-3,1e-2,3e-3",
                        help="one trial per learning rate, in this order")
    parser.add_argument("--sweep_trials", type=int, default=3,
                        help="trials of the sweep timed after (0: none)")
    parser.add_argument("--hparam", action="append", default=[],
                        metavar="KEY=VALUE", help="another hparams field "
                        "(repeatable)")
    parser.add_argument("--before", default="",
                        help="a checkout to compare with --repo: fresh "
                        "processes, XLA's cache cold then warm "
                        "(startup_compare.py)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="with --before: rounds of its four "
                        "measurements (fresh caches each); medians shown")
    parser.add_argument("--json", default="",
                        help="also write the trials' rows to this file")
    parser.add_argument("--workdir", default="",
                        help="where the runs write (default: a temporary "
                        "folder, removed after)")
    return parser.parse_args(argv)


class Clock:
    """Named moments and durations of one trial."""

    def __init__(self):
        self.marks, self.spans = {}, {}

    def mark(self, name):
        self.marks.setdefault(name, time.perf_counter())

    def timed(self, name, function):
        def wrapper(*args, **kw):
            began = time.perf_counter()
            try:
                return function(*args, **kw)
            finally:
                self.spans.setdefault(name, []).append(
                    time.perf_counter() - began)
        return wrapper


def step_timer(clock):
    import keras

    class StepTimer(keras.callbacks.Callback):
        """Wall time of each execution (steps_per_execution steps)."""

        def __init__(self):
            super().__init__()
            self.executions = []  # (first step, last step, seconds)

        def on_train_begin(self, logs=None):
            self.epoch_ends = [time.perf_counter()]  # (fit's start first)

        def on_epoch_end(self, epoch, logs=None):
            self.epoch_ends.append(time.perf_counter())

        def on_train_batch_begin(self, batch, logs=None):
            clock.mark("first_batch")
            self.began, self.first = time.perf_counter(), batch

        def on_train_batch_end(self, batch, logs=None):
            self.executions.append((self.first, batch,
                                    time.perf_counter() - self.began))

        def on_train_end(self, logs=None):
            clock.mark("fit_end")
    return StepTimer()


def run_trial(hp, workdir):
    """One trial through train.train_and_evaluate, timed phase by phase."""
    import dataloader
    import train
    clock, held = Clock(), {}
    real_load, real_build = dataloader.load, train.build_model
    real_final = train.final_metrics

    def load(*args, **kw):
        held["data"] = data = real_load(*args, **kw)
        return data

    def build(*args, **kw):
        model = real_build(*args, **kw)
        clock.mark("built")
        return model

    def final(model, *args, **kw):  # the model that trained (it may be
        held["model"] = model  # an earlier trial's: step_cache.py)
        return real_final(model, *args, **kw)
    dataloader.load = clock.timed("data", load)
    train.build_model = clock.timed("build", build)
    train.final_metrics = clock.timed("final", final)
    timer = step_timer(clock)
    try:
        clock.mark("start")
        train.train_and_evaluate(hp, workdir, verbose=0, callbacks=[timer])
        clock.mark("end")
    finally:
        dataloader.load, train.build_model = real_load, real_build
        train.final_metrics = real_final
    warm = warm_evaluations(held["model"], held["data"])
    row = phases(clock, timer.executions, warm, hp)
    ends = timer.epoch_ends
    row["epochs"] = [b - a for a, b in zip(ends, ends[1:])]
    return row


def warm_evaluations(model, data) -> float:
    """The final evaluations again, compiled: their compute alone."""
    if hasattr(data, "set_epoch"):
        data.set_epoch(0)
    began = time.perf_counter()
    for ds in (data.train, data.validation, data.test):
        if ds is not None:
            type(model).evaluate(model, ds, verbose=0)
    return time.perf_counter() - began


def phases(clock, executions, warm_eval, hp) -> dict:
    m, s = clock.marks, clock.spans
    spe = hp["steps_per_execution"]
    seconds = [t for _, _, t in executions]
    steady = statistics.median(seconds[1:-1] or seconds)
    first_compile = max(seconds[0] - steady, 0.0)
    last_first, last_end, last = executions[-1]
    last_compile = max(last - steady * (last_end - last_first + 1) / spe,
                       0.0) if len(executions) > 1 else 0.0
    eval_compile = max(sum(s.get("final", [0.0])) - warm_eval, 0.0)
    data, build = sum(s["data"]), sum(s["build"])
    fit_setup = m["first_batch"] - m["built"]
    checks = m["start"] and (m["built"] - m["start"]) - data - build
    startup = (checks + data + build + fit_setup + first_compile
               + last_compile + eval_compile)
    wall = m["end"] - m["start"]
    train = sum(seconds) - first_compile - last_compile
    return {"checks": checks, "data": data, "build": build,
            "fit_setup": fit_setup, "first_compile": first_compile,
            "last_compile": last_compile, "eval_compile": eval_compile,
            "startup": startup, "train": train, "eval": warm_eval,
            "end": m["end"] - m["fit_end"] - sum(s.get("final", [0.0])),
            "wall": wall, "share": startup / wall,
            "executions": len(executions)}


def first_over_steady(row) -> float:
    """The first epoch's wall time over the median of the others'."""
    first, *rest = row["epochs"]
    return first / statistics.median(rest)


COLUMNS = ("data", "build", "fit_setup", "first_compile", "last_compile",
           "eval_compile", "startup", "train", "eval", "end", "wall")


def show(rows, labels):
    head = f"{'trial':>12} " + " ".join(f"{c:>13}" for c in COLUMNS) + \
        f" {'start-up share':>15}"
    lines = [head]
    for label, row in zip(labels, rows):
        lines.append(f"{label:>12} " + " ".join(
            f"{row[c]:>13.2f}" for c in COLUMNS) +
            f" {100 * row['share']:>14.1f}%")
    return "\n".join(lines)


def time_sweep(hp, lrs, sweep_dir):
    """Seconds from run_sweep's call to the first trial, between trials,
    after the last, and the trials' own wall times."""
    import train
    import tune
    spans = []
    real = train.train_and_evaluate

    def timed(*args, **kw):
        began = time.perf_counter()
        try:
            return real(*args, **kw)
        finally:
            spans.append((began, time.perf_counter()))
    given = {k: (v,) for k, v in hp.items() if k != "lr"}  # all pinned
    given["lr"] = tuple(lrs)
    train.train_and_evaluate = timed
    try:
        began = time.perf_counter()
        tune.run_sweep(given, sweep_dir, verbose=False)
        ended = time.perf_counter()
    finally:
        train.train_and_evaluate = real
    gaps = [b - a for (_, a), (b, _) in zip(spans, spans[1:])]
    return {"before_first": spans[0][0] - began, "between": gaps,
            "after_last": ended - spans[-1][1],
            "trials": [b - a for a, b in spans]}


def without_options(argv, names) -> list:
    """argv less the options `names` (`--name=value` or `--name value`)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in names:
            skip = True
        elif not arg.startswith(tuple(f"{name}=" for name in names)):
            out.append(arg)
    return out


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.before:
        import startup_compare
        passed = without_options(argv, ("--before", "--repo", "--repeats",
                                        "--json"))
        return startup_compare.main(os.path.abspath(args.before),
                                    os.path.abspath(args.repo), passed,
                                    args.repeats, args.json)
    sys.path.insert(0, os.path.abspath(args.repo))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:  # as the entry points do, where the checkout has it
        from runtime import xla_cache
        xla_cache.install()
        cache = xla_cache.root() or "off"
    except ImportError:
        cache = "none in this checkout"
    began = time.perf_counter()
    import tensorflow  # noqa: F401
    tf_import = time.perf_counter() - began
    import keras  # noqa: F401
    import hparams
    import train  # noqa: F401
    import tune  # noqa: F401
    imports = time.perf_counter() - began
    extra = {}
    for pair in args.hparam:
        key, _, text = pair.partition("=")
        extra[key] = hparams.FIELDS_BY_NAME[key].parse_one(text)
    lrs = [float(v) for v in args.lrs.split(",") if v.strip()]
    base = {"dataset": args.dataset, "data_dir": args.data_dir,
            "arch": args.arch, "algorithm": args.algorithm,
            "examples_frac": args.examples_frac, "epochs": args.epochs,
            "batch_size": args.batch_size, "objective": "loss", **extra}
    folder = args.workdir or tempfile.mkdtemp(prefix="bpfree-startup-")
    print(f"repo {os.path.abspath(args.repo)}; {args.dataset} "
          f"{args.arch} {args.algorithm}, examples_frac "
          f"{args.examples_frac}, batch {args.batch_size}, {args.epochs} "
          f"epoch(s); "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)
    print(f"imports: {imports:.2f} s (tensorflow {tf_import:.2f} s), once "
          f"per process; XLA cache: {cache}", flush=True)
    try:
        rows = []
        for k, lr in enumerate(lrs):
            hp = hparams.make(**base, lr=lr)
            rows.append(run_trial(hp, os.path.join(folder, f"trial{k}")))
        print(show(rows, [f"lr={lr:g}" for lr in lrs]))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(rows, f)
        print("(seconds; start-up = data + build + fit_setup + the three "
              "compiles; train and eval: steady compute)")
        if args.epochs > 1:
            for lr, row in zip(lrs, rows):
                times = ", ".join(f"{t:.2f}" for t in row["epochs"])
                print(f"lr={lr:g}: epochs {times} s (the first from fit's "
                      f"start); first / steady (median of the rest) = "
                      f"{first_over_steady(row):.2f}")
        if args.sweep_trials:
            sweep = time_sweep(hparams.make(**base), lrs[:args.sweep_trials],
                               os.path.join(folder, "sweep"))
            print(f"sweep of {len(sweep['trials'])} trials: "
                  f"{sweep['before_first']:.2f} s before the first trial, "
                  f"{', '.join(f'{g:.2f}' for g in sweep['between'])} s "
                  f"between trials, {sweep['after_last']:.2f} s after the "
                  f"last; trials "
                  f"{', '.join(f'{t:.2f}' for t in sweep['trials'])} s")
    finally:
        if not args.workdir:
            shutil.rmtree(folder, ignore_errors=True)
    print(f"total {time.perf_counter() - BEGAN:.1f} s; load average "
          f"{os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
