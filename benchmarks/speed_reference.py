"""What speed.py measures the framework against: a hand-written BP loop
(keras layers, Adam, one tf.function step: the framework's overhead is its
step time over this one's), the machine's matmul roof, and each rule's
multiply-adds per step relative to BP's (the theory column)."""

from __future__ import annotations

import math
import time

import arch as arch_lib
import hparams as hparams_lib
import shapes

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
    """The minimal BP loop: keras layers (functional), Adam, one
    tf.function step."""
    import keras
    import tensorflow as tf
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
            x = keras.layers.Activation(activation)(keras_norm(x, spec))
        elif spec.kind == "conv":
            x = keras_conv(x, spec.units, spec.kernel, spec.stride,
                           spec.padding, spec.use_bias)
            x = keras.layers.Activation(activation)(keras_norm(x, spec))
        else:  # residual unit
            a = keras_conv(x, spec.units, 3, spec.stride, 1, spec.use_bias)
            a = keras.layers.Activation(activation)(keras_norm(a, spec))
            a = keras_norm(keras_conv(a, spec.units, 3, 1, 1,
                                      spec.use_bias), spec)
            if spec.stride != 1 or x.shape[-1] != spec.units:
                x = keras_norm(keras_conv(x, spec.units, 1, spec.stride, 0,
                                          spec.use_bias), spec)
            x = keras.layers.Activation(activation)(
                keras.layers.Add()([a, x]))
        x = keras_pool(x, spec.post)
    x = keras.layers.Flatten()(x) if len(x.shape) > 2 else x
    net = keras.Model(inputs, keras.layers.Dense(CLASSES)(x))
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


def arch_ops(arch, classes=CLASSES):
    """shapes.py's ops of the arch on its input, global flags at their
    defaults."""
    hp = hparams_lib.defaults()
    return shapes.network_ops(arch, input_shape_of(arch), classes,
                              hp["batch_norm"], hp["use_bias"])


def theoretical_macs(rule, arch, classes=CLASSES):
    """Multiply-adds per example of one training step (matmuls and convs
    only).  Chained rules: forward, weight gradients, and input gradients
    of every layer but those reading the network's input.  Direct rules:
    forward, weight gradients, the input gradients inside a block (a
    residual unit's second conv), and per hidden block the projection h B
    and the signal e Bᵀ; FDFA adds a forward-mode pass (a forward from
    block 2 on: the input carries no tangent) and its estimate uᵀ d."""
    import projection
    ops = arch_ops(arch, classes)
    forward = sum(op.macs for op in ops)
    first_block = sum(op.macs for op in ops if op.block == 1)
    inner = sum(op.macs for op in ops if op.inner)
    rule_cls = projection.get(rule)
    if rule_cls.chained:
        return 3 * forward - sum(op.macs for op in ops
                                 if op.block == 1 and not op.inner)
    hidden = sum(shapes.hidden_sizes(ops))
    macs = 2 * forward + inner + 2 * hidden * classes
    probes = (rule_cls.tangent_probe.__func__
              is not projection.Projection.tangent_probe.__func__)
    if probes:
        macs += forward - first_block + hidden * classes
    return macs
