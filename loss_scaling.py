"""Mixed precision in the one step (`--precision`): where float32 and loss
scaling enter, for every rule.

The blocks and the output layer take Keras' dtype policy (float32,
mixed_bfloat16 or mixed_float16), so the forward and backward passes run
in the compute dtype while every variable stays float32.  What a rule
derives its signals from is float32 whatever the policy: the logits are
cast to float32 before the global loss (`logits32`, so e is float32), and
projections, local losses, δ_l and the feedback gradients are computed
from float32 casts of h_l.  Under mixed_float16 the forward optimizer is
Keras' LossScaleOptimizer: S (its dynamic scale) multiplies what enters
the 16-bit backward pass (chained rules: the loss; direct rules: each δ_l
and e: `injected`) and the optimizer divides it out; the feedback
gradients are float32 and unscaled.  A step with any non-finite gradient
moves nothing and halves S (`apply_if_finite`).  Under float32 every cast
is the identity and the step is the one without this module.
"""

from __future__ import annotations

import keras
import tensorflow as tf


def scales(optimizer) -> bool:
    """Whether the forward optimizer scales the loss (mixed_float16)."""
    return isinstance(optimizer, keras.optimizers.LossScaleOptimizer)


def apply_if_finite(scaler, feedback_optimizer, step, forward_variables,
                    learned_feedback):
    """LossScaleOptimizer divides S out of the forward gradients and
    applies them (doubling S after its growth steps of finite gradients),
    and the feedback optimizer applies its float32 gradients, only if every
    gradient of both is finite; otherwise neither moves anything (nor KP's
    B, a forward variable) and S halves with its growth count reset, as
    LossScaleOptimizer does alone (its own check then sees finite
    gradients)."""
    finite = scaler.check_finite([*step.grads, *step.feedback_grads])

    def apply():
        scaler.apply(step.grads, forward_variables)
        if step.feedback_grads:
            feedback_optimizer.apply(step.feedback_grads, learned_feedback)

    def skip():
        scaler.step_counter.assign(0)
        scaler.dynamic_scale.assign(scaler.dynamic_scale * 0.5)

    keras.ops.cond(finite, apply, skip)


def logits32(z):
    """The logits in float32, where every loss is computed (the identity
    under float32)."""
    return tf.cast(z, tf.float32)


def injected(signal, dtype, scale=None):
    """A float32 teaching signal (δ_l or e) as it enters the backward pass
    of a tensor of `dtype`: × S under loss scaling, then cast (both no-ops
    under float32).  Scaling before the cast keeps small float16 signals
    from flushing to zero."""
    if scale is not None:
        signal = signal * scale
    return tf.cast(signal, dtype)
