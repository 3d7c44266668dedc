"""Optimizers and learning-rate schedules with PyTorch's semantics.

The reference implementations of these rules are PyTorch programs, so
`--optimizer` means what torch.optim means (g: the rule's gradient, η: the
learning rate of the step, λ: `--weight_decay`, μ: `--momentum`):

    sgd       W ← W − η (g + λW)
    momentum  b ← μ b + (g + λW);  W ← W − η b               SGD(momentum=μ)
    nesterov  b ← μ b + (g + λW);  W ← W − η (g + λW + μ b)  SGD(nesterov)
    adam      g' = g + λW;  m ← β₁m + (1−β₁)g';  v ← β₂v + (1−β₂)g'²;
              W ← W − η/(1−β₁ᵗ) · m / (√v / √(1−β₂ᵗ) + ε)    Adam
    adamw     W ← W (1 − ηλ), then adam's step with g' = g   AdamW

Weight decay is L2 (added to the gradient) for every optimizer but adamw,
which decouples it, exactly as torch.optim does.  Two places where Keras'
own optimizers differ and would break a reproduction: Keras' SGD keeps its
velocity in step units (v ← μv − ηg), which is PyTorch's only while η is
constant (not under a schedule); Keras' Adam adds ε to √v *after* the bias
correction (ε̂ of the Adam paper).  Both subclasses below reuse Keras'
slots, serialization and decoupled decay, and replace only `update_step`.

Kolen-Pollack's W − B shrinks by exactly (1 − ηλ) per step under sgd (the
L2 term is linear) and under adamw (the decay is applied to W and B alike
and g is the same for both); under momentum, nesterov and adam the L2 term
still pulls W and B together, through the optimizer's state.

`EpochSchedule` is the learning rate of every epoch (`--lr_schedule`,
`--warmup_epochs`), as PyTorch's schedulers stepped once per epoch.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from runtime.errors import UsageError
from layers import PACKAGE


class DirectUpdates:
    """Applies `update_step` variable by variable, as Keras' optimizers do
    on every backend but TensorFlow's, whose tf.distribute path (an
    all-reduce check, a merge call and an update context per variable)
    adds only Python to the trace of a one-device step.  The ops are the
    same.  Under a tf.distribute strategy, Keras' own path."""

    def _backend_update_step(self, grads, trainable_variables,
                             learning_rate):
        if tf.distribute.has_strategy():
            super()._backend_update_step(grads, trainable_variables,
                                         learning_rate)
            return
        for grad, variable in zip(grads, trainable_variables):
            # (the tf.Variable, as Keras' path passes it: a Keras variable
            # read under a mixed policy's autocast would be cast)
            if isinstance(variable, keras.Variable):
                variable = variable.value
            self.update_step(grad, variable, learning_rate)


@keras.saving.register_keras_serializable(PACKAGE)
class TorchSGD(DirectUpdates, keras.optimizers.SGD):
    """torch.optim.SGD (dampening 0): the velocity is in gradient units."""

    def __init__(self, learning_rate=0.01, momentum=0.0, nesterov=False,
                 l2=0.0, **kw):
        super().__init__(learning_rate, momentum=momentum, nesterov=nesterov,
                         **kw)
        self.l2 = l2

    def update_step(self, gradient, variable, learning_rate):
        lr = tf.cast(learning_rate, variable.dtype)
        g = tf.cast(gradient, variable.dtype)
        if self.l2:
            g = g + tf.cast(self.l2, variable.dtype) * variable
        if self.momentum:
            mu = tf.cast(self.momentum, variable.dtype)
            b = self.momentums[self._get_variable_index(variable)]
            self.assign(b, mu * b + g)
            g = g + mu * b if self.nesterov else b
        self.assign_sub(variable, lr * g)

    def get_config(self):
        return {**super().get_config(), "l2": self.l2}


@keras.saving.register_keras_serializable(PACKAGE)
class TorchAdam(DirectUpdates, keras.optimizers.Adam):
    """torch.optim.Adam (L2 via `l2`) or AdamW (Keras' decoupled
    `weight_decay`, applied before the step as AdamW does)."""

    def __init__(self, learning_rate=0.001, l2=0.0, **kw):
        super().__init__(learning_rate, **kw)
        self.l2 = l2

    def update_step(self, gradient, variable, learning_rate):
        dtype = variable.dtype
        lr = tf.cast(learning_rate, dtype)
        g = tf.cast(gradient, dtype)
        if self.l2:
            g = g + tf.cast(self.l2, dtype) * variable
        t = tf.cast(self.iterations + 1, dtype)
        beta_1, beta_2 = (tf.cast(self.beta_1, dtype),
                          tf.cast(self.beta_2, dtype))
        index = self._get_variable_index(variable)
        m, v = self._momentums[index], self._velocities[index]
        self.assign(m, beta_1 * m + (1 - beta_1) * g)
        self.assign(v, beta_2 * v + (1 - beta_2) * tf.square(g))
        correction_1 = 1 - tf.pow(beta_1, t)
        correction_2 = 1 - tf.pow(beta_2, t)
        denominator = tf.sqrt(v) / tf.sqrt(correction_2) + tf.cast(
            self.epsilon, dtype)
        self.assign_sub(variable, (lr / correction_1) * m / denominator)

    def get_config(self):
        return {**super().get_config(), "l2": self.l2}


OPTIMIZERS = {  # name: the optimizer at learning rate η, given λ, μ, ε
    "sgd": lambda lr, decay, mu, eps: TorchSGD(lr, l2=decay),
    "momentum": lambda lr, decay, mu, eps: TorchSGD(lr, momentum=mu,
                                                    l2=decay),
    "nesterov": lambda lr, decay, mu, eps: TorchSGD(
        lr, momentum=mu, nesterov=True, l2=decay),
    "adam": lambda lr, decay, mu, eps: TorchAdam(lr, epsilon=eps, l2=decay),
    "adamw": lambda lr, decay, mu, eps: TorchAdam(
        lr, epsilon=eps, weight_decay=decay or None),
}


def make(name, learning_rate, weight_decay=0.0, momentum=0.9,
         epsilon=1e-7):
    """The optimizer `name` (a key of OPTIMIZERS) at `learning_rate` (a
    float or a schedule)."""
    if name not in OPTIMIZERS:
        raise UsageError(f"unknown optimizer '{name}' "
                         f"(valid: {', '.join(OPTIMIZERS)})")
    return OPTIMIZERS[name](learning_rate, float(weight_decay),
                            float(momentum), float(epsilon))


# --- Learning-rate schedules ---------------------------------------------------

LR_SCHEDULES = ("constant", "step", "cosine")


@keras.saving.register_keras_serializable(PACKAGE)
class EpochSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """The learning rate of epoch e (0-based), constant within an epoch:

        e < W (warm-up):  lr · (e + 1) / (W + 1)
        then, k = e − W:  constant  lr
                          step      lr · decay^⌊k / decay_epochs⌋
                                    (PyTorch's StepLR)
                          cosine    lr · (1 + cos(π k / (epochs − W))) / 2
                                    (CosineAnnealingLR to 0 over the run)

    Evaluated at the optimizer's step count (e = step // steps_per_epoch),
    which a resumed run restores, so it resumes on the same value.  `lr` is
    read from a variable, not baked into the traced step, so that a trial
    of another learning rate reuses the compiled step (step_cache.py)."""

    def __init__(self, lr, steps_per_epoch, kind="constant", epochs=1,
                 warmup_epochs=0, decay=1.0, decay_epochs=1):
        if kind not in LR_SCHEDULES:
            raise UsageError(f"unknown lr_schedule '{kind}' "
                             f"(valid: {', '.join(LR_SCHEDULES)})")
        self.lr, self.steps_per_epoch = float(lr), max(int(steps_per_epoch),
                                                       1)
        self.base = tf.Variable(self.lr, dtype=tf.float32, trainable=False)
        self.kind, self.epochs = kind, int(epochs)
        self.warmup_epochs, self.decay = int(warmup_epochs), float(decay)
        self.decay_epochs = max(int(decay_epochs), 1)

    def __call__(self, step):
        epoch = tf.cast(tf.math.floordiv(tf.cast(step, tf.int64),
                                         self.steps_per_epoch), tf.float32)
        warmup = float(self.warmup_epochs)
        k = tf.maximum(epoch - warmup, 0.0)
        if self.kind == "step":
            factor = tf.pow(self.decay, tf.floor(k / self.decay_epochs))
        elif self.kind == "cosine":
            span = float(max(self.epochs - self.warmup_epochs, 1))
            factor = 0.5 * (1.0 + tf.cos(math.pi * k / span))
        else:
            factor = tf.ones(())
        ramp = (epoch + 1.0) / (warmup + 1.0)
        return self.base * tf.where(epoch < warmup, ramp, factor)

    def set_lr(self, lr: float) -> None:
        """Another base rate, for the steps already traced."""
        self.lr = float(lr)
        self.base.assign(self.lr)

    def epoch_lr(self, epoch: int) -> float:
        """The learning rate of `epoch` (for logs and tests)."""
        return float(self(epoch * self.steps_per_epoch))

    def get_config(self):
        return {"lr": self.lr, "steps_per_epoch": self.steps_per_epoch,
                "kind": self.kind, "epochs": self.epochs,
                "warmup_epochs": self.warmup_epochs, "decay": self.decay,
                "decay_epochs": self.decay_epochs}


class LearningRateLog(keras.callbacks.Callback):
    """Adds each epoch's learning rates (`lr`, and `fb_lr` for learned
    feedback) to the epoch's logs, so history.csv and TensorBoard show
    them.  Placed before the loggers in the callback list."""

    def __init__(self, schedules: dict):
        super().__init__()
        self.schedules = schedules  # log name: EpochSchedule

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            for name, schedule in self.schedules.items():
                logs[name] = schedule.epoch_lr(epoch)
