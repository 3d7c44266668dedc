"""Training throughput and peak memory of every rule, as ratios against BP.

    .venv/bin/python benchmarks/speed.py
    .venv/bin/python benchmarks/speed.py --rules=bp,dfa --archs=1000-1000-1000
    .venv/bin/python benchmarks/speed.py --archs=vit_mnist,mixer_mnist \\
        --skip_memory --hparam feedback_points=sublayer
    .venv/bin/python benchmarks/speed.py --steps=32 --repeats=10 \\
        --json=runs/speed.json --hparam use_xla=false

For each arch (default: the wide MLP 784-1000-1000-1000-10 and the small CNN
16C5-P2-64 on 28×28×1 inputs, the FDFA reference's MNIST CNN
fdfa_conv_mnist on 28×28×1 and He et al.'s resnet20 on CIFAR-shaped
32×32×3 inputs; batch 128; a named network gets the input it was published
on, any other arch 28×28×1) every rule trains through the
framework's own path (train.build_model with the hparams defaults: XLA on,
8 steps per execution; then the compiled function `Model.fit` calls once per
execution) on random data of that shape fed by the trainer's own tf.data
pipeline.  Beside them run two BP baselines of the same network built from
Keras' own layers, not the framework's (speed_reference.keras_network: for
a ViT, Keras' MultiHeadAttention, LayerNormalization and Dense), with Adam,
the same batch, data and XLA setting:

    keras_fit_bp    Keras' own compile and fit: the model compiled with
                    the framework's jit_compile and steps_per_execution,
                    its train_function timed exactly as the rules' are
                    (steps_per_execution steps per call, the iterator read
                    inside the call).  Framework BP / this is the cost of
                    the framework's model, step and layers over Keras'.
    handwritten_bp  a minimal loop: one tf.function step (jit_compile as
                    the framework's) called from Python once per batch,
                    steps_per_execution calls per execution, each batch
                    fetched by Python's next(): it also pays a call and a
                    host-side fetch per step, which fit's executions do not.

and the machine's plain matmul rate (a `tf.function` chain of matmuls of
the wide layer's shape), the roof.  The check lines (speed_report.py) hold
framework BP to 1.1× either baseline.

`--hparam feedback_points=sublayer` places a direct rule's teaching
signals after each sublayer of the transformer and mixer blocks; rules
without teaching signals (bp, fa, kp, shallow) and the baselines keep the
default placement, so BP stays the reference.

Timing: after compiling, rules are measured in rounds; in each round every
rule runs two windows of `--steps` steps between two BP windows (BP, rule,
rule, BP), so that its ratio to BP compares windows a fraction of a second
apart: on a shared machine other processes come and go faster than a whole
round.  The table gives the median of these ratios over rounds with their
quartiles.

Memory, each rule in a fresh subprocess so that nothing else is resident:
on GPU the peak of TensorFlow's GPU allocator from model build to the end of
training; on CPU the peak resident set size (VmHWM, reset after warm-up once
the XLA compiler's freed memory is handed back to the OS) minus the RSS
before the model was built, which includes about 150 MB of XLA runtime and
compiled code whatever the rule.  `--skip_memory` leaves it out.

`--hparam key=value` (repeatable) passes any hparams field to `hparams.make`,
e.g. `--hparam tracker=bp_cosine` to show what a setting costs.
`--json FILE` writes {arch: {rule: {samples_per_s, step_time_vs_bp,
peak_mem_mb, ...}}} atomically; each arch also holds "keras_fit_bp" and
"handwritten_bp", and the top-level "_machine" holds the device, the roof
per arch and the settings.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from runtime import quiet  # noqa: E402

quiet.install()  # TensorFlow's start-up lines hidden, as in train.py

import datasets  # noqa: E402
import hparams as hparams_lib  # noqa: E402
from process_memory import (gpu_present, peak_rss_mb,  # noqa: E402
                            reset_peak_rss, rss_mb)
from speed_reference import (CLASSES, INPUT_SHAPE,  # noqa: E402
                             HandwrittenRunner, MatmulRoof, input_shape_of,
                             keras_fit_model, theoretical_macs)
from speed_report import (BASELINES, HANDWRITTEN, KERAS_FIT,  # noqa: E402
                          WIDE_MLP, format_table, summarize)

DEFAULT_ARCHS = (WIDE_MLP, "16C5-P2-64", "fdfa_conv_mnist", "resnet20")
SYNTHETIC_EXAMPLES = 8192


# --- Settings -------------------------------------------------------------


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rules", default=",".join(hparams_lib.ALGORITHMS),
                        help="comma-separated rules (default: all "
                        f"{len(hparams_lib.ALGORITHMS)})")
    parser.add_argument("--archs", default=",".join(DEFAULT_ARCHS),
                        help="comma-separated arch strings")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=8,
                        help="train steps per timed window (rounded to "
                        "whole executions)")
    parser.add_argument("--repeats", type=int, default=10,
                        help="timed rounds, after compiling (each round "
                        "times every rule twice between two BP windows)")
    parser.add_argument("--hparam", action="append", default=[],
                        metavar="KEY=VALUE",
                        help="an hparams field passed to hparams.make "
                        "(repeatable)")
    parser.add_argument("--json", default="", help="write the results here")
    parser.add_argument("--skip_memory", action="store_true",
                        help="leave out the per-rule memory subprocesses")
    parser.add_argument("--memory_probe", action="store_true",
                        help=argparse.SUPPRESS)  # one rule, one arch: child
    args = parser.parse_args(argv)
    args.rules = [r.strip() for r in args.rules.split(",") if r.strip()]
    args.archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    for rule in args.rules:
        if rule not in hparams_lib.ALGORITHMS:
            parser.error(f"unknown rule '{rule}' (valid: "
                         f"{', '.join(hparams_lib.ALGORITHMS)})")
    args.extra = parse_hparam_pairs(args.hparam)
    return args


def parse_hparam_pairs(pairs) -> dict:
    """{'key': typed value} from ['key=value', ...], typed as flags are."""
    extra = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or key not in hparams_lib.FIELDS_BY_NAME:
            raise hparams_lib.UsageError(
                f"--hparam '{pair}': expected KEY=VALUE with KEY one of "
                f"{', '.join(hparams_lib.FIELDS_BY_NAME)}")
        extra[key] = hparams_lib.FIELDS_BY_NAME[key].parse_one(text)
    return extra


def hparams_for(arch, rule, args):
    """The hparams of a run (the dataset only sets the image shape that
    the arch is checked against: the data is synthetic).  A rule without
    teaching signals has no feedback points to place: it keeps the
    default placement whatever --hparam feedback_points says."""
    shape = input_shape_of(arch)
    dataset = "mnist" if shape[2] == 1 else "cifar10"
    size = 0 if shape == datasets.SPECS[dataset].shape else shape[0]
    extra = dict(args.extra)
    if rule not in hparams_lib.DIRECT_ALGORITHMS:
        extra.pop("feedback_points", None)
    return hparams_lib.make(**{"arch": arch, "algorithm": rule,
                               "batch_size": args.batch_size,
                               "dataset": dataset, "image_size": size,
                               **extra})


# --- Data -----------------------------------------------------------------


def synthetic_data(hp):
    """Random examples of the arch's input shape through the trainer's own
    pipeline (dataloader), repeated without end."""
    import numpy as np
    import tensorflow as tf
    import dataloader
    rng = np.random.default_rng(0)
    examples = SYNTHETIC_EXAMPLES // max(1, math.prod(
        input_shape_of(hp["arch"])) // math.prod(INPUT_SHAPE))
    x = rng.uniform(-1, 1, (examples, *input_shape_of(hp["arch"]))).astype(
        np.float32)
    y = np.eye(CLASSES, dtype=np.float32)[
        rng.integers(0, CLASSES, examples)]
    epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
    return dataloader.shuffled_batches(x, y, hp["batch_size"], hp["seed"],
                                       epoch).repeat()


# --- Timing ---------------------------------------------------------------


class FrameworkRunner:
    """Runs executions (steps_per_execution steps each) of the compiled
    function that `Model.fit` calls once per execution."""

    def __init__(self, model, ds, steps_per_execution):
        self.steps_per_execution = steps_per_execution
        # One short fit builds the optimizer and metrics and compiles.
        model.fit(ds, epochs=1, steps_per_epoch=2 * steps_per_execution,
                  verbose=0, shuffle=False)
        self.function = model.train_function
        self.batches = iter(ds)
        self.execute()  # traces again, for this iterator

    def execute(self):
        logs = self.function(self.batches)
        float(logs["loss"])  # waits for the device (GPUs run async)


def seconds_per_step(runner, steps):
    """Wall time per step of the executions covering `steps` steps."""
    executions = max(1, round(steps / runner.steps_per_execution))
    start = time.perf_counter()
    for _ in range(executions):
        runner.execute()
    return ((time.perf_counter() - start)
            / (executions * runner.steps_per_execution))


# --- Memory -----------------------------------------------------------------


def memory_probe(arch, rule, args):
    """Peak memory of training `rule` alone (run in a fresh process)."""
    import tensorflow as tf
    import train
    hp = hparams_for(arch, rule, args)
    ds = synthetic_data(hp)
    gpu = gpu_present()
    if gpu:
        tf.config.experimental.reset_memory_stats("GPU:0")
    baseline = rss_mb()
    model = train.build_model(hp, input_shape_of(arch), CLASSES)
    runner = FrameworkRunner(model, ds, hp["steps_per_execution"])
    if not gpu and not reset_peak_rss():
        raise OSError("cannot reset the peak RSS on this system")
    seconds_per_step(runner, args.steps)
    if gpu:
        peak = tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20
        return {"peak_mem_mb": peak, "measure": "gpu"}
    return {"peak_mem_mb": peak_rss_mb() - baseline, "measure": "rss"}


def probe_in_subprocess(arch, rule, args):
    command = [sys.executable, os.path.abspath(__file__), "--memory_probe",
               f"--archs={arch}", f"--rules={rule}",
               f"--batch_size={args.batch_size}", f"--steps={args.steps}",
               *[f"--hparam={pair}" for pair in args.hparam]]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or ["?"]
        print(f"warning: memory probe {arch} {rule} failed: {tail[0]}",
              file=sys.stderr)
        return {"peak_mem_mb": None, "measure": None}
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- One arch ---------------------------------------------------------------


def measure_arch(arch, args):
    """{rule: {...}} for one arch, and the roof measured beside it."""
    import train
    base_hp = hparams_for(arch, "bp", args)
    ds = synthetic_data(base_hp)
    models, runners = {}, {}
    for rule in args.rules:
        try:
            hp = hparams_for(arch, rule, args)
        except hparams_lib.UsageError as refusal:  # (e.g. pepita, resnet20)
            print(f"{arch}: {rule} left out: {refusal}", flush=True)
            continue
        models[rule] = train.build_model(hp, input_shape_of(arch),
                                         CLASSES)
        runners[rule] = FrameworkRunner(models[rule], ds,
                                        hp["steps_per_execution"])
    runners[KERAS_FIT] = FrameworkRunner(keras_fit_model(base_hp), ds,
                                         base_hp["steps_per_execution"])
    runners[HANDWRITTEN] = HandwrittenRunner(base_hp, ds)
    roof = MatmulRoof(args.batch_size, 1000, base_hp["use_xla"])
    for runner in runners.values():  # one untimed round: caches, threads
        seconds_per_step(runner, args.steps)
    reference = "bp" if "bp" in runners else args.rules[0]
    seconds, ratios, roof_gflops = paired_rounds(runners, reference, roof,
                                                 arch, args)
    results = summarize(seconds, ratios, macs_vs_bp(arch, runners, args),
                        args)
    for rule, model in models.items():
        results[rule]["state_mb"] = state_mb(model)
    return results, statistics.median(roof_gflops)


def paired_rounds(runners, reference, roof, arch, args):
    """Each round times every runner against the reference in the order
    reference, runner, runner, reference (a drift in the machine's speed
    cancels), so that a ratio compares windows a fraction of a second
    apart; other processes on a shared machine come and go faster than a
    whole round.  Returns ({name: [seconds per step]}, {name: [ratio per
    round]}, [roof GFLOP/s per round])."""
    seconds = {name: [] for name in runners}
    ratios = {name: [] for name in runners}
    roof_gflops = []
    for round_index in range(args.repeats):
        for name, runner in runners.items():
            if name == reference:
                continue
            windows = [seconds_per_step(r, args.steps) for r in
                       (runners[reference], runner, runner,
                        runners[reference])]
            seconds[reference] += [windows[0], windows[3]]
            seconds[name] += windows[1:3]
            ratios[name].append((windows[1] + windows[2])
                                / (windows[0] + windows[3]))
        ratios[reference].append(1.0)
        roof_gflops.append(roof.gflops())
        print(f"  {arch} round {round_index + 1}/{args.repeats}: "
              + " ".join(f"{name}={r[-1]:.2f}" for name, r in ratios.items())
              + f" (× {reference}) roof={roof_gflops[-1]:.0f}GFLOP/s",
              file=sys.stderr, flush=True)
    return seconds, ratios, roof_gflops


def state_mb(model):
    """Bytes of every variable the model and its optimizers hold (weights,
    feedback matrices, optimizer slots), in MB."""
    variables = list(model.variables) + list(model.optimizer.variables)
    if model.feedback_optimizer is not None:
        variables += list(model.feedback_optimizer.variables)
    unique = {id(v): v for v in variables}.values()
    return sum(v.numpy().nbytes for v in unique) / 2**20


def macs_vs_bp(arch, names, args):
    """{runner: its step's multiply-adds / BP's} (the baselines: BP's)."""
    def macs(name):
        rule = "bp" if name in BASELINES else name
        return theoretical_macs(rule, arch, feedback_points=hparams_for(
            arch, rule, args)["feedback_points"])
    return {name: macs(name) / macs("bp") for name in names}


def main(argv=None):
    args = parse_args(argv)
    if args.memory_probe:
        print(json.dumps(memory_probe(args.archs[0], args.rules[0], args)))
        return 0
    import tensorflow as tf
    base = hparams_for(args.archs[0], "bp", args)
    device = "GPU" if gpu_present() else f"CPU ({os.cpu_count()} cores)"
    print(f"device {device}, TF {tf.__version__}; use_xla="
          f"{base['use_xla']}, steps_per_execution="
          f"{base['steps_per_execution']}, batch {args.batch_size}, "
          f"{args.steps} steps × {args.repeats} rounds; extra hparams "
          f"{args.extra or 'none'}", flush=True)
    report = {"_machine": {"device": device, "tensorflow": tf.__version__,
                           "matmul_gflops": {}, "settings": {
                               k: v for k, v in vars(args).items()
                               if k != "memory_probe"}}}
    for arch in args.archs:
        results, roof = measure_arch(arch, args)
        measure = None
        if not args.skip_memory:
            for rule in [r for r in args.rules if r in results]:
                probe = probe_in_subprocess(arch, rule, args)
                results[rule]["peak_mem_mb"] = probe["peak_mem_mb"]
                measure = probe["measure"] or measure
        report[arch] = results
        report["_machine"]["matmul_gflops"][arch] = roof
        print(format_table(arch, results, measure, roof, args.batch_size,
                           args.extra.get("feedback_points", "block")),
              flush=True)
    if args.json:
        from runtime import atomic
        atomic.write_json(args.json, report)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except hparams_lib.UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
