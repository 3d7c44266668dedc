"""What speed.py measures the framework against: Keras' own BP of the
same network (keras layers and Adam, run by a hand-written tf.function
loop and by Keras' compile/fit: the framework's overhead is its step time
over theirs), the machine's matmul roof, and each rule's multiply-adds per
step relative to BP's (the theory column)."""

from __future__ import annotations

import functools
import math
import time

import arch as arch_lib
import hparams as hparams_lib
import shapes
from keras_token_blocks import (KERAS_TOKEN_BLOCKS, LAYER_NORM_EPSILON,
                                keras_head)

INPUT_SHAPE = (28, 28, 1)  # of an arch that is not a named network
CLASSES = 10


def input_shape_of(arch):
    """A named network's published input; 28×28×1 for any other arch."""
    preset = arch_lib.PRESETS.get(arch)
    return preset.input_shape if preset else INPUT_SHAPE


class HandwrittenRunner:
    """The same executions for the hand-written loop: one Python call of
    the compiled step per batch."""

    def __init__(self, hp, ds):
        self.steps_per_execution = hp["steps_per_execution"]
        self.step = handwritten_bp(hp)
        self.batches = iter(ds)
        self.execute()  # compiles

    def execute(self):
        for _ in range(self.steps_per_execution):
            loss = self.step(*next(self.batches))
        float(loss)


def handwritten_bp(hp):
    """The minimal BP loop: Keras' own network of the arch
    (`keras_network`), Adam, one tf.function step."""
    import keras
    import tensorflow as tf
    net = keras_network(hp)
    optimizer = keras.optimizers.Adam(hp["lr"])
    optimizer.build(net.trainable_variables)

    @tf.function(jit_compile=hp["use_xla"])
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(
                labels=y, logits=net(x, training=True)))
        grads = tape.gradient(loss, net.trainable_variables)
        optimizer.apply(grads, net.trainable_variables)
        return loss
    return step


def keras_fit_model(hp):
    """`keras_network`, compiled as Keras' own fit trains it: Adam,
    cross-entropy on the logits, XLA and steps per execution as the
    framework's (speed.py runs its train_function as the framework's)."""
    import keras
    net = keras_network(hp)
    net.compile(optimizer=keras.optimizers.Adam(hp["lr"]),
                loss=keras.losses.CategoricalCrossentropy(from_logits=True),
                jit_compile=hp["use_xla"],
                steps_per_execution=hp["steps_per_execution"])
    return net


def keras_network(hp):
    """The arch built from Keras' own layers (functional), not the
    framework's blocks: Dense, Conv2D, BatchNormalization, pools; a
    residual unit as Conv2D/BN/Add; and a ViT or MLP-Mixer as Keras
    writes one:

        E  Conv2D(d, p, strides=p, 'valid') → Reshape (T, d) → a learned
           position embedding (`PositionEmbedding`, one weight; with
           :cls a class token first)
        T  LayerNormalization(ε 1e-5) → MultiHeadAttention(h heads,
           key_dim d/h) → Add; LayerNormalization → Dense(r·d, gelu) →
           Dense(d) → Add
        M  LayerNormalization → Permute → Dense(S, gelu) → Dense(T) →
           Permute → Add; LayerNormalization → Dense(C, gelu) → Dense(d)
           → Add
        H  LayerNormalization → GlobalAveragePooling1D (Hm), the first
           token (Hc: Cropping1D, Flatten) or Flatten (Hf)

    Keras' MultiHeadAttention has separate q, k and v maps (EinsumDense)
    where the framework fuses them into one qkv map (d → 3d): the same
    parameters and multiply-adds.  GELU is exact (erf) in both."""
    import keras
    activation = {"lrelu": "leaky_relu", "swish": "silu"}.get(
        hp["activation"], hp["activation"])
    inputs = keras.Input(input_shape_of(hp["arch"]))
    x = inputs
    for spec in arch_lib.parse(hp["arch"]):
        spec = spec.resolved(hp["batch_norm"], hp["use_bias"], 0.0)
        x = keras_pool(x, spec.pre)
        if spec.kind == "dense":
            x = keras.layers.Flatten()(x) if len(x.shape) > 2 else x
            x = keras.layers.Dense(spec.units, use_bias=spec.use_bias)(x)
            x = keras.layers.LayerNormalization(
                epsilon=LAYER_NORM_EPSILON)(x) if spec.layer_norm else x
            x = keras.layers.Activation(activation)(keras_norm(x, spec))
        elif spec.kind == "conv":
            x = keras_conv(x, spec.units, spec.kernel, spec.stride,
                           spec.padding, spec.use_bias)
            x = keras.layers.Activation(activation)(keras_norm(x, spec))
        elif spec.kind == "residual":
            a = keras_conv(x, spec.units, 3, spec.stride, 1, spec.use_bias)
            a = keras.layers.Activation(activation)(keras_norm(a, spec))
            a = keras_norm(keras_conv(a, spec.units, 3, 1, 1,
                                      spec.use_bias), spec)
            if spec.stride != 1 or x.shape[-1] != spec.units:
                x = keras_norm(keras_conv(x, spec.units, 1, spec.stride, 0,
                                          spec.use_bias), spec)
            x = keras.layers.Activation(activation)(
                keras.layers.Add()([a, x]))
        else:
            x = KERAS_TOKEN_BLOCKS[spec.kind](x, spec)
        x = keras_pool(x, spec.post)
    x = keras.layers.Flatten()(x) if len(x.shape) > 2 else x
    return keras.Model(inputs, keras.layers.Dense(
        CLASSES, use_bias=hp["use_bias"])(x))


def keras_conv(x, units, kernel, stride, padding, use_bias):
    import keras
    if not isinstance(padding, str):
        x = keras.layers.ZeroPadding2D(padding)(x) if padding else x
        padding = "valid"
    return keras.layers.Conv2D(units, kernel, stride, padding,
                               use_bias=use_bias)(x)


def keras_norm(x, spec):
    import keras
    return keras.layers.BatchNormalization()(x) if spec.batch_norm else x


def keras_pool(x, pool):
    import keras
    if pool is None:
        return x
    if pool.head:
        return keras_head(x, pool.kind)
    if pool.kind == "global":
        return keras.layers.GlobalAveragePooling2D()(x)
    layer = (keras.layers.MaxPooling2D if pool.kind == "max"
             else keras.layers.AveragePooling2D)
    return layer(pool.size, pool.stride)(x)


class MatmulRoof:
    """GFLOP/s of a tf.function chain of (batch×width)·(width×width)
    matmuls: the rate the wide MLP's layers could reach at best."""

    def __init__(self, batch, width, use_xla, chain_length=50):
        import tensorflow as tf
        self.flops = 2 * batch * width * width * chain_length
        x = tf.random.normal((batch, width))
        w = tf.random.normal((width, width)) / math.sqrt(width)

        @tf.function(jit_compile=use_xla)
        def chain():
            y = x
            for _ in range(chain_length):
                y = tf.matmul(y, w)
            return y
        self.chain = chain
        self.gflops()  # compiles

    def gflops(self):
        start = time.perf_counter()
        self.chain().numpy()
        return self.flops / (time.perf_counter() - start) / 1e9


# --- Multiply-adds, for the theory column and achieved GFLOP/s ---------------


def arch_ops(arch, classes=CLASSES, input_shape=None):
    """shapes.py's ops of the arch on its input, global flags at their
    defaults."""
    hp = hparams_lib.defaults()
    return shapes.network_ops(arch, input_shape or input_shape_of(arch),
                              classes, hp["batch_norm"], hp["use_bias"])


def theoretical_macs(rule, arch, classes=CLASSES, feedback_points="block",
                     input_shape=None):
    """Multiply-adds per example of one training step: matmuls, convs and
    attention's two products (shapes.py's ops).  An op's backward costs
    its forward once for its weight gradient (attention, which has no
    weights: the gradient of its second operand) and once more where its
    input gradient is needed.

    bp, fa, kp  forward, weight gradients, and input gradients of every
                op but those reading the network's input.
    shallow     forward and the output layer's weight gradient: no hidden
                backward (the output layer alone learns, not a head's
                LayerNorm: model.forward_variables).
    direct      forward, weight gradients, the input gradients inside a
                segment (`direct_rule_plan`), and per feedback point of n
                units the signal e Bᵀ (n·C), the projection h B (n·C)
                when the signal reads it (`reads_projection`: not DFA's
                nor DRTP's, whose local loss is linear in p), and a
                learned B's update (n·C: DKP's hᵀ e, FDFA's estimate
                uᵀ d; DKP's at the last point is the output layer's
                weight gradient, computed once, where that layer reads
                h itself: no head, no dropout between).
    fdfa        also a tangent pass from block 2 on (the input carries
                no tangent): each op once, attention twice (both of its
                operands carry one).
    fg_w, fg_a, pepita: `forward_only_macs`."""
    import projection
    rule_cls = projection.get(rule)
    ops = arch_ops(arch, classes, input_shape)
    forward = sum(op.macs for op in ops)
    if rule in ("fg_w", "pepita"):
        return forward_only_macs(rule, ops, input_shape or input_shape_of(
            arch), classes)
    if rule_cls.chained:
        return 3 * forward - sum(op.macs for op in ops
                                 if op.block == 1 and not op.inner)
    if not rule_cls.trains_hidden:
        return forward + ops[-1].macs
    points, through = direct_rule_plan(arch, ops, feedback_points)
    if rule == "fg_a":  # J_l u_l: a tangent pass from each point on
        return 2 * forward + through + sum(
            tangent_macs(ops, after=block)
            for block, _ in _point_blocks(arch, feedback_points))
    probes = (rule_cls.tangent_probe.__func__
              is not projection.Projection.tangent_probe.__func__)
    updates = sum(points) if rule_cls.learns_feedback else 0
    specs = arch_lib.parse(arch)
    if (rule_cls.learns_feedback and not probes and not specs[-1].dropout
            and arch_lib.output_head(specs) is None):
        updates -= points[-1]  # hᵀ e: the output layer's weight gradient
    macs = (2 * forward + through + (1 + reads_projection(rule))
            * sum(points) * classes + updates * classes)
    if probes:
        macs += tangent_macs(ops, after=1)
    return macs


def tangent_macs(ops, after):
    """A forward-mode pass from the output of block `after` to the logits:
    each op once (its input carries the tangent), attention twice."""
    return sum(op.macs * (2 if bilinear(op) else 1) for op in ops
               if op.block > after or op.block == 0)


def _point_blocks(arch, feedback_points):
    """(block index, point) of every feedback point (a sublayer point is
    counted from its block's output: the rest of its block is left out)."""
    return [(index, point) for index, spec in enumerate(
        arch_lib.parse(arch), start=1)
        for point in range(3 if feedback_points == "sublayer"
                           and spec.kind in ("transformer", "mixer") else 1)]


def forward_only_macs(rule, ops, input_shape, classes):
    """fg_w: the forward pass and one tangent pass in which every weight
    carries a tangent (x v_W + t_x W: twice an op's multiply-adds, once
    for ops reading the input); no weight gradient (g = s v).  pepita:
    two forward passes, each weight map's gradient once (no input
    gradients), and e Fᵀ (D·C)."""
    forward = sum(op.macs for op in ops)
    if rule == "fg_w":
        return forward + sum(
            op.macs * (1 if op.block == 1 and not op.inner else 2)
            for op in ops)
    weighted = sum(op.macs for op in ops if op.params)
    return 2 * forward + weighted + math.prod(input_shape) * classes


def bilinear(op) -> bool:
    """An op with multiply-adds and no weights multiplies two things
    computed from its input (attention's q kᵀ and its weighted sum)."""
    return op.macs > 0 and op.params == 0


def direct_rule_plan(arch, ops, feedback_points="block"):
    """([units of each feedback point], multiply-adds of the input
    gradients a direct rule's signals pass through).

    A signal trains the variables of its segment (the ops since the
    previous feedback point) and needs an op's input gradient only where
    a variable lies before that op in the segment: the ops shapes.py
    marks `inner` (a residual unit's second conv; every op of a
    transformer or mixer block, which opens with a LayerNorm), the first
    weight map after a head's LayerNorm (a head opening a block, or the
    output layer: the head is the output stage's, after the last
    feedback point), never an op reading the segment's input.  Under
    `sublayer` a transformer or mixer block has three points (token_
    blocks.py): t1 after the first residual sum (T·d), m after the MLP's
    hidden activation (its hidden width) and the output (T·d); the MLP's
    second layer reads m, its segment's input, so its input gradient
    goes."""
    specs = arch_lib.parse(arch)
    points, through = [], 0
    for index, spec in enumerate(specs, start=1):
        block = [op for op in ops if op.block == index]
        inner = [op.inner for op in block]
        if spec.pre is not None and spec.pre.head:
            inner[next(i for i, op in enumerate(block) if op.macs)] = True
        if feedback_points == "sublayer" and spec.kind in ("transformer",
                                                           "mixer"):
            points += [math.prod(block[-1].shape),
                       math.prod(block[-2].shape)]
            inner[-1] = False
        points.append(math.prod(block[-1].shape))
        through += sum(op.macs for op, i in zip(block, inner) if i)
    if arch_lib.output_head(specs) is not None:
        through += ops[-1].macs
    return points, through


@functools.cache
def reads_projection(rule) -> bool:
    """Whether the rule's teaching signal ∂ℓ/∂h = (∂ℓ/∂p) Bᵀ reads
    p = h B: only when ∂ℓ/∂p depends on p (cce's softmax, mse's square).
    Where it does not (dfa, dkp, fdfa, drtp: ℓ linear in p), nothing
    reads h B and XLA leaves it out of the step.  Found by evaluating
    ∂ℓ/∂p at two p."""
    import numpy as np
    import tensorflow as tf
    import projection
    rng = np.random.default_rng(0)
    layer = projection.get(rule)(CLASSES)
    error, target = (tf.constant(rng.normal(size=(4, CLASSES)), tf.float32)
                     for _ in range(2))

    def signal(p):
        p = tf.constant(p, tf.float32)
        with tf.GradientTape() as tape:
            tape.watch(p)
            loss = layer.local_loss(p, error, target)
        return tape.gradient(loss, p).numpy()
    return not np.array_equal(signal(rng.normal(size=(4, CLASSES))),
                              signal(rng.normal(size=(4, CLASSES))))
