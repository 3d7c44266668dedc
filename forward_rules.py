"""Rules that learn from forward passes alone: forward gradients with
weight perturbation (fg_w) or activity perturbation (fg_a), and PEPITA.

Registered in projection.RULES like every rule (projection.py imports this
module before its control, shallow).  fg_a is a direct rule (its teaching
signal enters at each feedback point, as DFA's does); fg_w and pepita make
their whole step
themselves (`Projection.own_step`), since what they update is not a
gradient the model's two paths (chained, direct) can give.

Their forward-mode products and draws: forward_mode.py.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from loss_scaling import injected, logits32
from blocks import LayerRecord
from forward_mode import PointTangents, normal_like, transposed
from projection import Projection, register
from step import Step


def finished(model, tape, grads, loss, target, z, hidden, scale) -> Step:
    """The Step of a rule that made it (its gradients × S under loss
    scaling, as `ProjectionModel.rule_gradients` gives them), measured by
    the trackers from the forward pass's tape."""
    step = Step(grads, [], loss, target, z, hidden, scale)
    if model.diagnostics is not None:
        model.diagnostics.observe(model, tape, step)
    return step


@register("fg_w")
class WeightForwardGradient(Projection):
    """Forward gradient, weight perturbation (Baydin, Pearlmutter, Syme,
    Wood & Torr 2022): v ~ N(0, I) over all trainable weights, the output
    layer's included, and g = (∇L · v) v, the scalar from one forward-mode
    product; the mean of K directions (--fg_directions).  E[g] = ∇L."""

    steps_itself = True

    @classmethod
    def own_step(cls, model, x, target, scale):
        variables = model.forward_variables
        with tf.GradientTape(persistent=True) as tape:
            hidden, z = model.forward(x, training=True)
            z = logits32(z)
            loss = model.global_loss(target, z)
        error = tape.gradient(loss, z)
        count = model.spec["fg_directions"]
        vjps, along = transposed(tape, z, variables, persistent=count > 1)
        grads = [tf.zeros_like(v) for v in variables]
        for _ in range(count):
            v = normal_like(variables, model.seed_generator)
            slope = tf.reduce_sum(error * along(vjps, v)) / count  # ∇L·v/K
            grads = [g + slope * vi for g, vi in zip(grads, v)]
        if scale is not None:  # (no 16-bit backward pass for S to guard:
            grads = [g * scale for g in grads]  # applied, to be removed)
        return finished(model, tape, grads, loss, target, z, hidden, scale)


@register("fg_a")
class ActivityForwardGradient(Projection):
    """Forward gradient, activity perturbation (Ren, Kornblith, Liao &
    Hinton 2023): at each feedback point u_l ~ N(0, I) per example and
    δ_l = (∂L/∂h_l · u_l) u_l, the scalar from a forward-mode product
    (e · J_l u_l); the mean of K directions (--fg_directions).  E[δ_l] =
    ∂L/∂h_l.  No feedback matrix."""

    projects = False

    def build(self, h_shape):
        self.built = True  # (nothing to hold: no B)

    def teach(self, h, error, target, tangents=None):
        h = tf.cast(h, tf.float32)
        signal = tf.zeros_like(h)
        for u, d in tangents:
            along = tf.reduce_sum(error * tf.cast(d, tf.float32), axis=1)
            signal += tf.reshape(along, [-1] + [1] * (len(h.shape) - 1)) \
                * tf.cast(u, tf.float32)
        signal /= len(tangents)
        return signal, tf.reduce_sum(h * tf.stop_gradient(signal)), None

    @classmethod
    def tangent_probe(cls, seed_generator, directions=1):
        return PointTangents(seed_generator, directions)


@register("pepita")
class Pepita(Projection):
    """PEPITA (Dellaferrera & Kreiman 2022): a second forward pass on
    x' = x + e Fᵀ, e = softmax(z) − y and F fixed random (D × C, He-uniform
    × 0.05); hidden layer l: ΔW_l = −η (h_l − h'_l)ᵀ h'_{l−1} / N (h'_0 =
    x'), no activation derivative; the output layer: −η e'ᵀ h'_{L−1} / N
    with the modulated pass's error.  Dropout draws one mask for both
    passes, and h_l − h'_l is taken after it (the reference's masked
    activations).  Dense and conv blocks without norms."""

    steps_itself = True
    supports_reconstruction = False
    modulates_input = True
    F_SCALE = 0.05  # the paper's (and GiorgiaD/PEPITA's) F = 0.05 · He-U

    def _feedback_initializer(self, n):
        limit = self.F_SCALE * math.sqrt(6.0 / n)
        return keras.initializers.RandomUniform(-limit, limit,
                                                seed=self.seed)

    @classmethod
    def own_step(cls, model, x, target, scale):
        first, second = LayerRecord(), LayerRecord()
        masks = [d.seed_generator.state for d in model.dropouts if d]
        drawn_from = [tf.identity(state) for state in masks]
        with tf.GradientTape(persistent=model.diagnostics is not None) as tape:
            hidden, z = model.forward(x, training=True, record=first)
            z = logits32(z)
            loss = model.global_loss(target, z)
        for state, start in zip(masks, drawn_from):  # the same masks again
            state.assign(start)
        error = model.output_function(z) - target  # PEPITA's e: not / N
        (modulator,) = model.projections
        x2 = x + tf.cast(tf.reshape(tf.matmul(
            error, modulator.feedback, transpose_b=True), tf.shape(x)),
            x.dtype)
        block_tapes = []
        with tf.GradientTape() as out_tape:
            _, z2 = model.forward(x2, training=True, block_tapes=block_tapes,
                                  record=second)
            loss2 = model.global_loss(target, logits32(z2))
        n = tf.cast(tf.shape(z)[0], tf.float32)
        grads = []
        for block, dropout, block_tape, (_, h), (a2, h2), out, out2 in zip(
                model.blocks, model.dropouts, block_tapes, first.pairs,
                second.pairs, first.outputs, second.outputs, strict=True):
            if dropout is not None:  # (h − h')·m/keep: no pool after h
                h, h2 = out, out2
            difference = (tf.cast(h, tf.float32) - tf.cast(h2, tf.float32))
            grads += block_tape.gradient(
                a2, block.trainable_variables,
                output_gradients=injected(difference / n, a2.dtype, scale))
        grads += out_tape.gradient(loss2, model.output_variables,
                                   output_gradients=scale)
        return finished(model, tape, grads, loss, target, z, hidden, scale)
