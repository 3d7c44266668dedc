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


class TangentProbe:
    """The logits' directional derivative d = Σ_k J_k u_k along random
    directions u_l ~ N(0, I) of every hidden output at once (J_k = ∂z/∂h_k),
    for the cost of one JVP (forward-mode in effect).

    d is computed as the transpose of a vector-Jacobian product: a tape of
    the forward pass from the h_l gives g_l(a) = J_lᵀ a for a cotangent a at
    the logits; Σ_l <g_l(a), u_l> is linear in a, and its gradient with
    respect to a is Σ_l J_l u_l = d.  XLA drops the values of g_l (nothing
    reads them), leaving one matmul per layer, as forward mode would.
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
        """Draws u_l for hidden output h_l (returned unchanged), in h_l's
        dtype: under a mixed precision d is a product through the network
        in 16 bits, and ĝ_l pairs it with the u_l that entered it."""
        self._tape.watch(h)
        self.hidden.append(h)
        self.directions.append(tf.cast(standard_normal(
            tf.shape(h), self.seed_generator), h.dtype))
        return h

    def tangents(self, z):
        """[(u_l, d)] for every hidden block, d = Σ_k J_k u_k."""
        if self._tangents is None:
            cotangent = tf.zeros_like(z)
            with tf.GradientTape(watch_accessed_variables=False) as outer:
                outer.watch(cotangent)
                transposed = self._tape.gradient(z, self.hidden,
                                                 output_gradients=cotangent)
            d = outer.gradient(transposed, cotangent,
                               output_gradients=self.directions)
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

    def perturb(self, h):
        self._tape.watch(h)
        self.hidden.append(h)
        self.directions.append([tf.cast(standard_normal(
            tf.shape(h), self.seed_generator), h.dtype)
            for _ in range(self.count)])
        return h

    def tangents(self, z):
        """[[(u_l, J_l u_l)] × K] for every feedback point."""
        if self._tangents is None:
            cotangent = tf.zeros_like(z)
            with tf.GradientTape(persistent=True,
                                 watch_accessed_variables=False) as outer:
                outer.watch(cotangent)
                transposed = self._tape.gradient(
                    z, self.hidden, output_gradients=cotangent)
            self._tangents = [
                [(u, outer.gradient(t, cotangent, output_gradients=u))
                 for u in us]
                for t, us in zip(transposed, self.directions)]
        return self._tangents


def jvp(tape, z, variables, directions):
    """J v = Σ_s J_s v_s, the logits' derivative along `directions` (one
    per variable) from the forward pass on `tape`: one forward-mode
    product, as the transpose of a vector-Jacobian product."""
    cotangent = tf.zeros_like(z)
    with tf.GradientTape(watch_accessed_variables=False) as outer:
        outer.watch(cotangent)
        transposed = tape.gradient(
            z, variables, output_gradients=cotangent,
            unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return outer.gradient(transposed, cotangent, output_gradients=directions)


def normal_like(variables, seed_generator):
    """One N(0, I) direction over all `variables` (one draw, split)."""
    sizes = [math.prod(v.shape) for v in variables]
    flat = standard_normal((sum(sizes),), seed_generator)
    return [tf.reshape(part, v.shape) for part, v in
            zip(tf.split(flat, sizes), variables)]
