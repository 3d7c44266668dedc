"""Forward-mode products of the network, for the rules that need them
(fdfa's feedback estimate, fg_a's and fg_w's forward gradients), and the
normal draws their directions are made of.

Each product J v is computed as the transpose of a vector-Jacobian
product: a tape of the forward pass gives g(a) = Jᵀ a for a cotangent a at
the logits; <g(a), v> is linear in a, and its gradient with respect to a
is J v.  XLA drops the values of g (nothing reads them), leaving the
forward-mode chain of matmuls.
"""

from __future__ import annotations

import math

import tensorflow as tf


def transposed(tape, z, sources, persistent=False):
    """The forward-mode products of the logits z along directions of
    `sources` (recorded on `tape`): ([J_sᵀ a] for a cotangent a at z, and
    `along(those, directions)` → Σ J_s v_s, the gradient with respect to a
    of Σ <J_sᵀ a, v_s>).  `persistent`: `along` may be called again."""
    cotangent = tf.zeros_like(z)
    with tf.GradientTape(persistent=persistent,
                         watch_accessed_variables=False) as outer:
        outer.watch(cotangent)
        vjps = tape.gradient(
            z, sources, output_gradients=cotangent,
            unconnected_gradients=tf.UnconnectedGradients.ZERO)

    def along(some, directions):
        return outer.gradient(some, cotangent, output_gradients=directions)
    return vjps, along


class TangentProbe:
    """The logits' directional derivative d = Σ_k J_k u_k along random
    directions u_l ~ N(0, I) of every hidden output at once (J_k = ∂z/∂h_k),
    for the cost of one JVP (forward-mode in effect, `transposed`).
    tf.autodiff.ForwardAccumulator gives the same d but gives every weight
    a zero tangent and multiplies by it: one wasted matmul per layer that
    XLA keeps (a quarter of a BP step on 784-1000-1000-1000-10)."""

    def __init__(self, seed_generator):
        self.seed_generator = seed_generator
        self.directions, self.hidden = [], []
        self._tape = tf.GradientTape(watch_accessed_variables=False)
        self._tangents = None

    def __enter__(self):
        self._tape.__enter__()
        return self

    def __exit__(self, *exc):
        return self._tape.__exit__(*exc)

    def perturb(self, h):
        """Draws h_l's direction(s) (h_l is returned unchanged)."""
        self._tape.watch(h)
        self.hidden.append(h)
        self.directions.append(self.draw(h))
        return h

    def draw(self, h):
        """u_l in h_l's dtype: under a mixed precision d is a product
        through the network in 16 bits, and ĝ_l pairs it with the u_l
        that entered it."""
        return tf.cast(standard_normal(tf.shape(h), self.seed_generator),
                       h.dtype)

    def tangents(self, z):
        """[(u_l, d)] for every hidden block, d = Σ_k J_k u_k."""
        if self._tangents is None:
            vjps, along = transposed(self._tape, z, self.hidden)
            d = along(vjps, self.directions)
            self._tangents = [(u, d) for u in self.directions]
        return self._tangents


def standard_normal(shape, seed_generator):
    """N(0, 1) samples: Box-Muller on Philox uniforms, seeded by the model.

    Not keras.random.normal: it asks TF for the auto-selected stateless
    generator, which XLA on CPU runs about 25× slower than Philox (about
    100 ms for 128×1000 samples, more than a whole training step), and
    Philox's own normals cost 3× Box-Muller on its uniforms.  Same
    distribution, another random stream (measured on 2 CPU cores)."""
    seed = tf.cast(tf.math.floormod(seed_generator.next(), tf.int32.max - 1),
                   tf.int32)
    count = tf.reduce_prod(shape)
    u = tf.random.stateless_uniform((2, (count + 1) // 2), seed=seed,
                                    alg="philox")
    radius = tf.sqrt(-2.0 * tf.math.log1p(-u[0]))  # u in [0, 1): finite
    angle = (2.0 * math.pi) * u[1]
    pairs = tf.concat([radius * tf.cos(angle), radius * tf.sin(angle)], 0)
    return tf.reshape(pairs[:count], shape)


class PointTangents(TangentProbe):
    """fg_a's probe: K directions u_l ~ N(0, I) at each feedback point, and
    each point's own J_l u_l (TangentProbe sums them over the points)."""

    def __init__(self, seed_generator, count):
        super().__init__(seed_generator)
        self.count = count

    def draw(self, h):
        one = super().draw
        return [one(h) for _ in range(self.count)]

    def tangents(self, z):
        """[[(u_l, J_l u_l)] × K] for every feedback point."""
        if self._tangents is None:
            vjps, along = transposed(self._tape, z, self.hidden,
                                     persistent=True)
            self._tangents = [[(u, along(t, u)) for u in us]
                              for t, us in zip(vjps, self.directions)]
        return self._tangents


def normal_like(variables, seed_generator):
    """One N(0, I) direction over all `variables` (one draw, split)."""
    sizes = [math.prod(v.shape) for v in variables]
    flat = standard_normal((sum(sizes),), seed_generator)
    return [tf.reshape(part, v.shape) for part, v in
            zip(tf.split(flat, sizes), variables)]
