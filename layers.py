"""Building blocks: dense/conv layers that can send errors back through a
feedback kernel B instead of W (feedback alignment), and the block
layer → [batch norm] → activation → [max pool] that every arch token makes.
"""

from __future__ import annotations

import contextlib
import math

import keras
import tensorflow as tf

import arch as arch_lib

PACKAGE = "bpfree"

ACTIVATIONS = {
    "tanh": tf.nn.tanh,
    "relu": tf.nn.relu,
    "lrelu": lambda a: tf.nn.leaky_relu(a, alpha=0.01),
    "swish": tf.nn.silu,
    "sigmoid": tf.nn.sigmoid,
}


def feedback_initializer(name: str, seed: int, fan_in: int):
    """A seeded initializer for a feedback matrix.

    `uniform` is U(−1/√n, 1/√n) with n the number of rows (the units the
    matrix reads from), which keeps a projection at unit-order scale.
    """
    if name == "uniform":
        limit = 1.0 / math.sqrt(max(fan_in, 1))
        return keras.initializers.RandomUniform(-limit, limit, seed=seed)
    if name == "zeros":
        return keras.initializers.Zeros()
    return keras.initializers.get({"class_name": name,
                                   "config": {"seed": seed}})


FORWARD_INITS = ("glorot_uniform", "torch", "he_uniform", "he_normal",
                 "lecun_normal", "orthogonal")


def kernel_initializer(init: str):
    """The forward kernels' initializer (`--init`), seeded by Keras' global
    seed (`keras.utils.set_random_seed`) like every other weight.

    `torch` is PyTorch's default for nn.Linear and nn.Conv2d:
    kaiming_uniform_(a=√5), i.e. gain² = 2/(1 + 5) = 1/3 and
    U(±√(3 · gain² / fan_in)) = U(±1/√fan_in).  The others are Keras' own.
    """
    if init == "torch":
        return keras.initializers.VarianceScaling(
            scale=1.0 / 3.0, mode="fan_in", distribution="uniform")
    return init


def bias_initializer(init: str, fan_in: int):
    """The biases' initializer: PyTorch draws them U(±1/√fan_in); Keras'
    initializations start them at zero."""
    if init == "torch":
        bound = 1.0 / math.sqrt(max(fan_in, 1))
        return keras.initializers.RandomUniform(-bound, bound)
    return keras.initializers.Zeros()


# --- Feedback alignment ops -------------------------------------------------
# Forward: y = x W.  Backward: dx = dy Bᵀ (B in place of W), dW = xᵀ dy exact
# given dy.  B gets dW too (Kolen-Pollack) when it is trainable; the tape only
# asks for it then.


# Diagnostics (trackers.py) need backprop's gradient of the same forward
# pass: inside `true_gradient()`, gradients *built* of these ops send errors
# back through W.  It is read when the gradient is traced, never at run time.
_TRUE_GRADIENT = [False]


@contextlib.contextmanager
def true_gradient():
    """Gradients taken inside use W in place of B (backprop)."""
    previous, _TRUE_GRADIENT[0] = _TRUE_GRADIENT[0], True
    try:
        yield
    finally:
        _TRUE_GRADIENT[0] = previous


@tf.custom_gradient
def feedback_matmul(x, kernel, backward_kernel):
    def grad(dy):
        back = kernel if _TRUE_GRADIENT[0] else backward_kernel
        dx = tf.matmul(dy, back, transpose_b=True)
        dw = tf.matmul(x, dy, transpose_a=True)
        return dx, dw, dw
    return tf.matmul(x, kernel), grad


@tf.custom_gradient
def feedback_conv2d(x, kernel, backward_kernel):
    """'same'-padded stride-1 convolution whose input gradient is the
    transposed convolution with B's kernel."""
    def grad(dy):
        back = kernel if _TRUE_GRADIENT[0] else backward_kernel
        dx = tf.nn.conv2d_transpose(dy, back, tf.shape(x),
                                    strides=1, padding="SAME")
        dw = tf.raw_ops.Conv2DBackpropFilter(
            input=x, filter_sizes=tf.shape(kernel), out_backprop=dy,
            strides=[1, 1, 1, 1], padding="SAME")
        return dx, dw, dw
    return tf.nn.conv2d(x, kernel, strides=1, padding="SAME"), grad


class _ForwardInit:
    """A dense or conv layer initialised by `--init`.  The kernel's
    initializer is known at construction; `torch` biases need the layer's
    fan-in, known only when it is built."""

    def _set_init(self, init):
        self.init = init

    def build(self, input_shape):
        if self.use_bias:
            fan_in = input_shape[-1] * math.prod(
                getattr(self, "kernel_size", ()))
            self.bias_initializer = bias_initializer(self.init, fan_in)
        super().build(input_shape)

    def get_config(self):
        return {**super().get_config(), "init": self.init}


@keras.saving.register_keras_serializable(PACKAGE)
class Dense(_ForwardInit, keras.layers.Dense):
    """keras' Dense, initialised by `--init`."""

    def __init__(self, units, init="glorot_uniform", **kw):
        kw.setdefault("kernel_initializer", kernel_initializer(init))
        super().__init__(units, **kw)
        self._set_init(init)


@keras.saving.register_keras_serializable(PACKAGE)
class Conv2D(_ForwardInit, keras.layers.Conv2D):
    """keras' Conv2D, initialised by `--init`."""

    def __init__(self, filters, kernel_size, init="glorot_uniform", **kw):
        kw.setdefault("kernel_initializer", kernel_initializer(init))
        super().__init__(filters, kernel_size, **kw)
        self._set_init(init)


class _BackwardKernelMixin:
    """Adds `backward_kernel` (B, shape of W), fixed or learned."""

    def _add_backward_kernel(self, learned, bw_init, seed):
        fan_in = math.prod(self.kernel.shape[:-1])
        self.backward_kernel = self.add_weight(
            name="backward_kernel", shape=self.kernel.shape,
            initializer=feedback_initializer(bw_init, seed, fan_in),
            trainable=learned)

    # Dense/Conv2D save only kernel and bias (their quantization-aware
    # format); the plain Layer format saves every variable, B included.
    def save_own_variables(self, store):
        keras.layers.Layer.save_own_variables(self, store)

    def load_own_variables(self, store):
        keras.layers.Layer.load_own_variables(self, store)


@keras.saving.register_keras_serializable(PACKAGE)
class FeedbackDense(_BackwardKernelMixin, Dense):
    """Dense layer whose backward pass uses B instead of W."""

    def __init__(self, units, learned=False, bw_init="uniform", seed=0, **kw):
        super().__init__(units, **kw)
        self.learned, self.bw_init, self.seed = learned, bw_init, seed

    def build(self, input_shape):
        super().build(input_shape)
        self._add_backward_kernel(self.learned, self.bw_init, self.seed)

    def call(self, inputs):
        y = feedback_matmul(inputs, self.kernel.value,
                            self.backward_kernel.value)
        return y + self.bias if self.use_bias else y

    def get_config(self):
        return {**super().get_config(), "learned": self.learned,
                "bw_init": self.bw_init, "seed": self.seed}


@keras.saving.register_keras_serializable(PACKAGE)
class FeedbackConv2D(_BackwardKernelMixin, Conv2D):
    """'same' stride-1 Conv2D whose backward pass uses B's kernel."""

    def __init__(self, filters, kernel_size, learned=False, bw_init="uniform",
                 seed=0, **kw):
        super().__init__(filters, kernel_size, padding="same", **kw)
        self.learned, self.bw_init, self.seed = learned, bw_init, seed

    def build(self, input_shape):
        super().build(input_shape)
        self._add_backward_kernel(self.learned, self.bw_init, self.seed)

    def convolution_op(self, inputs, kernel):
        return feedback_conv2d(inputs, tf.convert_to_tensor(kernel),
                               self.backward_kernel.value)

    def get_config(self):
        config = super().get_config()
        config.pop("padding", None)
        return {**config, "learned": self.learned, "bw_init": self.bw_init,
                "seed": self.seed}


@keras.saving.register_keras_serializable(PACKAGE)
class Block(keras.layers.Layer):
    """One arch token: dense or conv → [batch norm] → activation → [pool].

    `kernel_feedback` is None for an ordinary layer, "fixed" or "learned" for
    a layer that sends its error back through B (FA, KP).  Dropout is not
    here: it acts on what the next block reads, while a local loss reads
    the block's own output.
    """

    def __init__(self, kind, units, kernel=0, pool=0, activation="tanh",
                 batch_norm=False, use_bias=True, kernel_feedback=None,
                 bw_init="uniform", seed=0, init="glorot_uniform",
                 bn_momentum=0.99, bn_epsilon=1e-3, **kw):
        super().__init__(**kw)
        self.spec = dict(kind=kind, units=units, kernel=kernel, pool=pool,
                         activation=activation, batch_norm=batch_norm,
                         use_bias=use_bias, kernel_feedback=kernel_feedback,
                         bw_init=bw_init, seed=seed, init=init,
                         bn_momentum=bn_momentum, bn_epsilon=bn_epsilon)
        self.layer = make_linear(kind, units, kernel, use_bias,
                                 kernel_feedback, bw_init, seed, init)
        self.norm = (keras.layers.BatchNormalization(
            momentum=bn_momentum, epsilon=bn_epsilon) if batch_norm
            else None)
        self.activation = ACTIVATIONS[activation]
        self.pool = keras.layers.MaxPooling2D(pool) if pool else None
        # Set by ProjectionModel.compile: the pool formulation that is fast
        # under the step's compiler (see `max_pool`).
        self.reshape_pool = False

    def build(self, input_shape):
        if self.built:
            return
        shape = self._linear_input_shape(input_shape)
        self.layer.build(shape)
        shape = self.layer.compute_output_shape(shape)
        if self.norm is not None:
            self.norm.build(shape)
        if self.pool is not None:
            self.pool.build(shape)
        self.built = True

    def _linear_input_shape(self, shape):
        if self.spec["kind"] == "dense" and len(shape) > 2:
            return (shape[0], math.prod(shape[1:]))
        return tuple(shape)

    def call(self, x, training=False):
        if self.spec["kind"] == "dense" and len(x.shape) > 2:
            x = tf.reshape(x, (-1, math.prod(x.shape[1:])))
        a = self.layer(x)
        if self.norm is not None:
            a = self.norm(a, training=training)
        h = self.activation(a)
        if self.pool is None:
            return h
        if self.reshape_pool:
            return reshaped_max_pool(h, self.spec["pool"])
        return self.pool(h)

    def compute_output_shape(self, input_shape):
        shape = self.layer.compute_output_shape(
            self._linear_input_shape(input_shape))
        return self.pool.compute_output_shape(shape) if self.pool else shape

    def get_config(self):
        return {**super().get_config(), **self.spec}


def reshaped_max_pool(h, size):
    """keras' MaxPooling2D(size) (stride size, 'valid') as a max over the
    window axes of a reshape.

    Under XLA on CPU its gradient is elementwise and about 8× faster than
    MaxPoolGrad, which XLA lowers to a scatter (5.5 vs 44 ms at
    128×28×28×16, 2 CPU cores); without XLA the native op is the
    faster one.  Exact ties (measure zero for float inputs) share the
    gradient instead of giving it to the first maximum."""
    _, height, width, channels = h.shape
    rows, cols = height // size, width // size
    h = h[:, :rows * size, :cols * size, :]
    windows = tf.reshape(h, (-1, rows, size, cols, size, channels))
    return tf.reduce_max(windows, axis=(2, 4))


def make_linear(kind, units, kernel=0, use_bias=True, kernel_feedback=None,
                bw_init="uniform", seed=0, init="glorot_uniform"):
    """The dense or conv layer of a block (or the output layer)."""
    if kernel_feedback is None:
        if kind == "dense":
            return Dense(units, init, use_bias=use_bias)
        return Conv2D(units, kernel, init, padding="same", use_bias=use_bias)
    learned = kernel_feedback == "learned"
    if kind == "dense":
        return FeedbackDense(units, learned, bw_init, seed, use_bias=use_bias,
                             init=init)
    return FeedbackConv2D(units, kernel, learned, bw_init, seed,
                          use_bias=use_bias, init=init)


def blocks_from_arch(arch: str, **block_kw) -> list[Block]:
    """One Block per parsed arch spec; each gets its own feedback seed."""
    seed = block_kw.pop("seed", 0)
    return [Block(spec.kind, spec.units, spec.kernel, spec.pool,
                  seed=seed * 1000 + index, name=f"block{index + 1}",
                  **block_kw)
            for index, spec in enumerate(arch_lib.parse(arch))]
