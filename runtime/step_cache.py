"""Compiled steps reused by the next trial of the same graph in a process.

Tracing a model's train and test steps and XLA-compiling them (one program
per batch shape: the full batch, the epoch's last batch, each split's last
batch in evaluation) costs seconds, while a 1-epoch trial of a small
network trains for less.  Two trials whose hyperparameters differ only in
`seed` and the learning rates trace to the same graph: everything a trial
changes there lives in variables (weights, feedback matrices, batch-norm
statistics, seed-generator states, the optimizers' slots and step counts,
the schedules' base rates).  So a trial that finishes hands its model back
(`keep`); the next trial of the same graph builds its own model as before,
for its initial state, and `adopt` copies that state into the kept model,
whose compiled steps then run it: the same ops on the same values, so its
metrics are bitwise those of a fresh model (tests/test_step_cache.py).

BPFREE_STEP_REUSE=off turns this off (every trial traces its own steps).
Trials with trackers are not reused (their variables live outside the
model's).  At most KEPT models are held, the most recently finished.
"""

from __future__ import annotations

import collections
import json
import os

ENV = "BPFREE_STEP_REUSE"
KEPT = 8
# Fields that reach the traced step only through variables.
IN_VARIABLES = ("seed", "lr", "fb_lr")

_kept: collections.OrderedDict = collections.OrderedDict()


def graph_of(values) -> str:
    """The settings of a trial that decide its traced graph (all but those
    held in variables), as one string."""
    return json.dumps({k: v for k, v in dict(values).items()
                       if k not in IN_VARIABLES}, sort_keys=True, default=str)


def key(hp, data) -> str | None:
    """What decides the traced graph of a trial, its data's shapes
    included; None: never reused."""
    if os.environ.get(ENV, "on").lower() in ("off", "0", "false", "no"):
        return None
    if hp.get("tracker"):
        return None
    return json.dumps([graph_of(hp), list(data.input_shape),
                       data.target_dim, data.steps_per_epoch,
                       str(data.train.element_spec)], default=str)


def keep(graph_key, model) -> None:
    """Holds a finished trial's model for the next trial of its graph."""
    if graph_key is None:
        return
    _kept.pop(graph_key, None)
    _kept[graph_key] = model
    while len(_kept) > KEPT:
        _kept.popitem(last=False)


def take(graph_key, fresh):
    """The kept model of `graph_key` holding `fresh`'s state, or `fresh`
    (nothing kept, or a mismatch).  What is taken is held no more until
    its trial finishes (a failed trial's model is not reused)."""
    kept = _kept.pop(graph_key, None) if graph_key is not None else None
    if kept is None or not adopt(kept, fresh):
        return fresh
    return kept


def adopt(kept, fresh) -> bool:
    """Copies every variable of `fresh` (a model just built, not trained)
    into `kept`; False, and nothing copied, if they do not match."""
    fresh.build_optimizers()
    pairs = [(kept.variables, fresh.variables)]
    schedules = []
    for name in ("optimizer", "feedback_optimizer"):
        a, b = getattr(kept, name), getattr(fresh, name)
        if (a is None) != (b is None):
            return False
        if a is not None:
            pairs.append((a.variables, b.variables))
            schedules.append((schedule_of(a), schedule_of(b)))
    if not all(same_layout(a, b) for a, b in pairs):
        return False
    if not all(same_except_lr(a, b) for a, b in schedules):
        return False
    for mine, theirs in pairs:
        for v, w in zip(mine, theirs):
            v.assign(w)
    for a, b in schedules:
        if a is not None:
            a.set_lr(b.lr)
    kept.spec = dict(fresh.spec)  # saved with model.keras: this seed
    kept._initial_epoch = None  # a resumed trial's start is not the next's
    return True


def same_layout(mine, theirs) -> bool:
    return len(mine) == len(theirs) and all(
        tuple(v.shape) == tuple(w.shape) and v.dtype == w.dtype
        for v, w in zip(mine, theirs))


def schedule_of(optimizer):
    """The EpochSchedule an optimizer (or a LossScaleOptimizer's inner
    one) follows, or None."""
    import optimizers
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    schedule = getattr(inner, "_learning_rate", None)
    return schedule if isinstance(schedule, optimizers.EpochSchedule) \
        else None


def same_except_lr(a, b) -> bool:
    if a is None or b is None:
        return a is b
    config_a, config_b = a.get_config(), b.get_config()
    config_a.pop("lr"), config_b.pop("lr")
    return config_a == config_b


def clear() -> None:
    _kept.clear()
