"""speed.py's table: per arch, each rule's throughput, step time and
multiply-adds against BP's, its memory, and one line per speed target."""

from __future__ import annotations

import statistics

import arch as arch_lib
from hparams import DIRECT_ALGORITHMS, SIGN_ALGORITHMS
from speed_reference import input_shape_of, theoretical_macs

KERAS_FIT = "keras_fit_bp"  # Keras' own model and fit: BP's baseline row
HANDWRITTEN = "handwritten_bp"  # the hand-written BP loop's row
BASELINES = {KERAS_FIT: "Keras fit BP", HANDWRITTEN: "hand-written BP"}
WIDE_MLP = "1000-1000-1000"  # 784-1000-1000-1000-10, the first default arch


MEMORY_MEASURES = {
    "gpu": "peak of TF's GPU allocator, model build to end of training",
    "rss": "peak RSS after warm-up minus RSS before the model was built",
}


def format_table(arch, results, measure, roof, batch,
                 feedback_points="block"):
    shape = "×".join(map(str, input_shape_of(arch)))
    lines = [f"\narch {arch} ({shape} inputs, 10 classes"
             + (f"; direct rules' feedback points: {feedback_points}"
                if is_token_arch(arch) else "") + ")",
             f"{'rule':<15}{'samples/s':>10}{'ms/step':>9}{'vs bp':>7}"
             f"{'quartiles':>12}{'MACs':>6}{'state MB':>9}"
             f"{'peak MB':>8}"]
    for name, r in results.items():
        lines.append(
            f"{name:<15}{r['samples_per_s']:>10.0f}{r['step_ms']:>9.2f}"
            f"{r['step_time_vs_bp']:>7.2f}"
            f"{r['ratio_q1']:>7.2f}–{r['ratio_q3']:<4.2f}"
            f"{r['macs_vs_bp']:>6.2f}"
            f"{_mb(r['state_mb']):>9}{_mb(r['peak_mem_mb']):>8}")
    lines.append(f"matmul roof ({batch}×1000 · 1000×1000, tf.function, "
                 f"median over the rounds): {roof:.1f} GFLOP/s")
    if "bp" in results:
        flops = (2 * theoretical_macs("bp", arch)
                 * results["bp"]["samples_per_s"] / 1e9)
        lines.append(f"BP runs its matmuls/convs at {flops:.1f} GFLOP/s, "
                     f"{100 * flops / roof:.0f}% of the roof")
    lines.append("vs bp: median over rounds of (step time / BP's step time "
                 "in adjacent windows), with its quartiles; MACs: "
                 "multiply-adds of the step / BP's; state MB: variables and "
                 "optimizer slots")
    if measure:
        lines.append(f"peak MB: {MEMORY_MEASURES[measure]}")
    lines += check_lines(arch, results, feedback_points)
    return "\n".join(lines)


def _mb(value):
    return "-" if value is None else f"{value:.0f}"


def is_token_arch(arch) -> bool:
    return any(spec.tokens for spec in arch_lib.parse(arch))


# Step time limits against BP's (the project's speed targets): any rule
# 1.5, FDFA (an extra forward-mode pass) 2.5, shallow (no hidden backward)
# 1.0: it must beat BP; framework BP against either Keras baseline 1.1.
# DFA on the wide MLP 0.8 (it needs 0.74× BP's multiply-adds); on token
# networks (issue 21) every direct rule but FDFA 1.1 with its signals at
# the blocks' outputs (a block's backward is BP's, less the first map's
# input gradient, plus e Bᵀ).
# Sign-concordant feedback 1.2 (issue 22): FA's step plus sign(W) ∘ M;
# fg_a 2.5 (a tangent pass from every feedback point on).  fg_w and
# pepita have no target, only their ratio: fg_w draws a normal per weight
# every step (2.8M on the wide MLP: 60 ms, six BP steps), pepita runs a
# second forward pass.
LIMITS = {"fdfa": 2.5, "fg_a": 2.5, "shallow": 1.0, "other": 1.5,
          "baseline": 1.1, "fg_w": None, "pepita": None,
          **{rule: 1.2 for rule in SIGN_ALGORITHMS}}
WIDE_MLP_LIMITS = {"dfa": 0.8}
TOKEN_BLOCK_LIMITS = {rule: 1.1 for rule in DIRECT_ALGORITHMS
                      if rule not in ("fdfa", "fg_a")}


def limit_of(rule, arch, feedback_points="block"):
    """The step-time limit against BP's, or None: no target."""
    limit = LIMITS.get(rule, LIMITS["other"])
    if arch == WIDE_MLP:
        limit = WIDE_MLP_LIMITS.get(rule, limit)
    if feedback_points == "block" and is_token_arch(arch):
        limit = TOKEN_BLOCK_LIMITS.get(rule, limit)
    return limit


def check_lines(arch, results, feedback_points="block"):
    """One line per speed target: the ratio, the limit, ok or OVER."""
    if "bp" not in results:
        return []
    checks = [(f"framework BP / {label}", 1 / results[name]["step_time_vs_bp"],
               LIMITS["baseline"])
              for name, label in BASELINES.items() if name in results]
    for rule, r in results.items():
        if rule == "bp" or rule in BASELINES:
            continue
        checks.append((f"{rule} / bp", r["step_time_vs_bp"],
                       limit_of(rule, arch, feedback_points)))
    return [f"check {name}: {ratio:.2f} (no target: reported)"
            if limit is None else
            f"check {name}: {ratio:.2f} (limit {limit}) "
            f"{'ok' if ratio <= limit else 'OVER'}"
            for name, ratio, limit in checks]


def quartiles(values):
    if len(values) < 2:  # --repeats=1: one ratio per rule, no spread
        return values[0], values[0]
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q3


def summarize(seconds, ratios, macs, args):
    """Per runner: the median step time, the median and quartiles over
    rounds of its paired ratio to BP, and its multiply-adds over BP's
    (`macs`)."""
    results = {}
    for name, times in seconds.items():
        step = statistics.median(times)
        q1, q3 = quartiles(ratios[name])
        results[name] = {
            "samples_per_s": args.batch_size / step,
            "step_ms": 1e3 * step,
            "best_step_ms": 1e3 * min(times),
            "step_time_vs_bp": statistics.median(ratios[name]),
            "ratio_q1": q1, "ratio_q3": q3,
            "macs_vs_bp": macs[name],
            "peak_mem_mb": None, "state_mb": None,
        }
    return results
