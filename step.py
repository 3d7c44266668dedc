"""What one training step computed, before any variable moves: the model
makes it (model.py), the rules that make their whole step too
(forward_rules.py); the optimizers apply it and the trackers read it."""

from __future__ import annotations

import dataclasses

import tensorflow as tf


@dataclasses.dataclass
class Step:
    """What one training step computed."""

    grads: list  # aligned with ProjectionModel.forward_variables, × S
    feedback_grads: list  # aligned with ProjectionModel.learned_feedback
    loss: tf.Tensor  # float32, unscaled
    target: tf.Tensor
    z: tf.Tensor  # the logits, float32
    hidden: list  # in the compute dtype
    # mixed_float16: the loss scale S that `grads` carry; else None.
    loss_scale: tf.Tensor | None = None
    # Direct rules: what Projection.teach gave each hidden block, δ_l and
    # ℓ_l (float32, unscaled); the trackers read them (chained rules: []).
    signals: list = dataclasses.field(default_factory=list)
    local_losses: list = dataclasses.field(default_factory=list)
