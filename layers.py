"""Dense and conv layers initialised by `--init`, and their twins that send
errors back through a feedback kernel B instead of W (feedback alignment,
Kolen-Pollack, sign-concordant feedback).  Blocks of these layers are in blocks.py.
"""

from __future__ import annotations

import contextlib
import functools
import math

import keras
import tensorflow as tf

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


def feedback_matmul(x, kernel, backward_kernel):
    """x W with dx = dy Bᵀ and dW = xᵀ dy; x of any rank ≥ 2 (tokens: (N,
    T, d)), its leading axes one batch for the product."""
    if len(x.shape) == 2:
        return _feedback_matmul(x, kernel, backward_kernel)
    lead = tf.shape(x)[:-1]
    flat = tf.reshape(x, (-1, x.shape[-1]))
    y = _feedback_matmul(flat, kernel, backward_kernel)
    return tf.reshape(y, tf.concat([lead, tf.shape(y)[-1:]], 0))


@tf.custom_gradient
def _feedback_matmul(x, kernel, backward_kernel):
    def grad(dy):
        back = kernel if _TRUE_GRADIENT[0] else backward_kernel
        dx = tf.matmul(dy, back, transpose_b=True)
        dw = tf.matmul(x, dy, transpose_a=True)
        return dx, dw, dw
    return tf.matmul(x, kernel), grad


def feedback_conv2d(x, kernel, backward_kernel, strides=1, padding="SAME"):
    """Convolution ('SAME' or 'VALID', any stride) whose input gradient is
    the transposed convolution with B's kernel, same strides and padding.
    Explicit padding is a tf.pad before a 'VALID' one (its gradient, a
    slice, is exact for every rule)."""
    return _feedback_conv(int(strides), padding.upper())(
        x, kernel, backward_kernel)


@functools.lru_cache(maxsize=None)
def _feedback_conv(strides, padding):
    @tf.custom_gradient
    def conv(x, kernel, backward_kernel):
        def grad(dy):
            back = kernel if _TRUE_GRADIENT[0] else backward_kernel
            dx = tf.nn.conv2d_transpose(dy, back, tf.shape(x),
                                        strides=strides, padding=padding)
            dw = tf.raw_ops.Conv2DBackpropFilter(
                input=x, filter_sizes=tf.shape(kernel), out_backprop=dy,
                strides=[1, strides, strides, 1], padding=padding)
            return dx, dw, dw
        return tf.nn.conv2d(x, kernel, strides=strides,
                            padding=padding), grad
    return conv


def pad_images(x, pixels):
    """Zero padding of `pixels` on every side of the image axes."""
    if not pixels:
        return x
    return tf.pad(x, [[0, 0], [pixels, pixels], [pixels, pixels], [0, 0]])


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
    """keras' Conv2D, initialised by `--init`; `pad` > 0 pads that many
    zero pixels on every side (PyTorch's `padding=p`) before a 'valid'
    convolution."""

    def __init__(self, filters, kernel_size, init="glorot_uniform", pad=0,
                 **kw):
        kw.setdefault("kernel_initializer", kernel_initializer(init))
        if pad:
            kw["padding"] = "valid"
        super().__init__(filters, kernel_size, **kw)
        self._set_init(init)
        self.pad = pad

    def convolution_op(self, inputs, kernel):
        return super().convolution_op(pad_images(inputs, self.pad), kernel)

    def compute_output_shape(self, input_shape):
        n, h, w, c = input_shape
        grow = 2 * self.pad
        return super().compute_output_shape(
            (n, None if h is None else h + grow,
             None if w is None else w + grow, c))

    def get_config(self):
        return {**super().get_config(), "pad": self.pad}


# Sign-concordant feedback (Liao, Leibo & Poggio 2016; Xiao et al. 2018;
# the definitions of jsalbert/biotorch): B = sign(W) ∘ M, recomputed from
# the current W at every step, with magnitudes M
#   usf   uniform: the draws' standard deviation a/√3 everywhere
#   frsf  |R|, R ~ U(−a, a) drawn once (the variable backward_kernel)
#   brsf  |R|, R ~ U(−a, a) drawn anew for every batch
# where U(−a, a) is --bw_init's law (SIGN_BW_INITS): a = 1/√fan_in
# (`uniform`) or √(6/(fan_in + fan_out)) (`glorot_uniform`, biotorch's
# xavier: then B has biotorch's scale in all three).
SIGN_FEEDBACK = ("usf", "brsf", "frsf")
SIGN_BW_INITS = ("uniform", "glorot_uniform")


def sign_feedback_bound(bw_init: str, shape) -> float:
    """a of U(−a, a), --bw_init's law for a kernel of `shape` (dense: (in,
    out); conv: (kh, kw, in, out), fans times the window, as Keras')."""
    fan_in = math.prod(shape[:-1])
    if bw_init == "uniform":
        return 1.0 / math.sqrt(max(fan_in, 1))
    if bw_init == "glorot_uniform":
        fan_out = shape[-1] * math.prod(shape[:-2])
        return math.sqrt(6.0 / (fan_in + fan_out))
    raise ValueError(f"sign-concordant feedback draws from {SIGN_BW_INITS}, "
                     f"not {bw_init!r}")


def _mix(x):
    """lowbias32 (C. Wellons' integer hash): every output bit depends on
    every input bit."""
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 16))
    x = x * tf.constant(0x7FEB352D, tf.uint32)
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 15))
    x = x * tf.constant(0x846CA68B, tf.uint32)
    return tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 16))


def hashed_uniform(shape, seed):
    """U[0, 1) samples, 24 bits each: a counter-based generator, the hash
    of each element's index mixed with the (2,) `seed`.  brsf draws a
    kernel's worth every step: Philox (tf.random.stateless_uniform) takes
    2.8 ms per million on XLA's CPU backend, this 0.6 ms (2 cores), which
    on 784-1000-1000-1000-10 is the difference between 2.1× BP's step and
    about BP's."""
    seed = tf.cast(seed, tf.uint32)
    # (an odd constant: the hash maps 0 to 0, and seed 0's state is 0, 0)
    key = _mix(seed[0] * tf.constant(0x9E3779B9, tf.uint32) + seed[1]
               + tf.constant(0x6A09E667, tf.uint32))
    count = math.prod(shape)
    index = tf.cast(tf.range(count, dtype=tf.int32), tf.uint32)
    bits = _mix(index * tf.constant(0x85EBCA6B, tf.uint32) + key)
    uniform = tf.cast(tf.bitwise.right_shift(bits, 8), tf.float32) * (
        1.0 / (1 << 24))
    return tf.reshape(uniform, shape)


class _BackwardKernelMixin:
    """Adds B (shape of W), fixed or learned (`backward_kernel`), or
    sign-concordant (SIGN_FEEDBACK): `feedback_kernel()` is the B of a
    step."""

    def _add_backward_kernel(self, learned, bw_init, seed, sign=None):
        fan_in = math.prod(self.kernel.shape[:-1])
        if sign in ("usf", "brsf"):  # no B to keep: it is computed
            self._sign_bound = sign_feedback_bound(bw_init,
                                                   self.kernel.shape)
            if sign == "brsf":
                self.magnitude_seeds = keras.random.SeedGenerator(seed)
            return
        initializer = (
            keras.initializers.RandomUniform(
                -sign_feedback_bound(bw_init, self.kernel.shape),
                sign_feedback_bound(bw_init, self.kernel.shape), seed=seed)
            if sign == "frsf" else
            feedback_initializer(bw_init, seed, fan_in))
        self.backward_kernel = self.add_weight(
            name="backward_kernel", shape=self.kernel.shape,
            initializer=initializer, trainable=learned)

    def feedback_kernel(self, kernel=None, peek=False):
        """B of this step, in the kernel's dtype.  `kernel`: W as the layer
        reads it (default: the variable).  brsf draws its magnitudes from
        the layer's seed generator, which a training step advances; `peek`
        draws the next step's without advancing it (inference, where
        nothing reads B, trackers and tests)."""
        kernel = tf.convert_to_tensor(
            self.kernel.value if kernel is None else kernel)
        if self.sign is None:
            return tf.cast(self.backward_kernel.value, kernel.dtype)
        if self.sign == "usf":
            magnitude = self._sign_bound / math.sqrt(3.0)
        elif self.sign == "frsf":
            magnitude = tf.abs(self.backward_kernel.value)
        else:
            state = (self.magnitude_seeds.state.value if peek
                     else self.magnitude_seeds.next())
            magnitude = self._sign_bound * hashed_uniform(kernel.shape, state)
        return tf.stop_gradient(tf.sign(kernel)
                                * tf.cast(magnitude, kernel.dtype))

    # Dense/Conv2D save only kernel and bias (their quantization-aware
    # format); the plain Layer format saves every variable, B included.
    def save_own_variables(self, store):
        keras.layers.Layer.save_own_variables(self, store)

    def load_own_variables(self, store):
        keras.layers.Layer.load_own_variables(self, store)


@keras.saving.register_keras_serializable(PACKAGE)
class FeedbackDense(_BackwardKernelMixin, Dense):
    """Dense layer whose backward pass uses B instead of W."""

    def __init__(self, units, learned=False, bw_init="uniform", seed=0,
                 sign=None, **kw):
        super().__init__(units, **kw)
        self.learned, self.bw_init, self.seed = learned, bw_init, seed
        self.sign = sign

    def build(self, input_shape):
        super().build(input_shape)
        self._add_backward_kernel(self.learned, self.bw_init, self.seed,
                                  self.sign)

    def call(self, inputs, training=None):
        kernel = self.kernel.value
        y = feedback_matmul(inputs, kernel, self.feedback_kernel(
            kernel, peek=not training))
        return y + self.bias if self.use_bias else y

    def get_config(self):
        return {**super().get_config(), "learned": self.learned,
                "bw_init": self.bw_init, "seed": self.seed,
                "sign": self.sign}


@keras.saving.register_keras_serializable(PACKAGE)
class FeedbackConv2D(_BackwardKernelMixin, Conv2D):
    """Conv2D (any stride and padding) whose backward pass uses B's
    kernel."""

    def __init__(self, filters, kernel_size, learned=False, bw_init="uniform",
                 seed=0, sign=None, **kw):
        super().__init__(filters, kernel_size, **kw)
        self.learned, self.bw_init, self.seed = learned, bw_init, seed
        self.sign, self._peek = sign, True

    def build(self, input_shape):
        super().build(input_shape)
        self._add_backward_kernel(self.learned, self.bw_init, self.seed,
                                  self.sign)

    def call(self, inputs, training=None):
        self._peek = not training  # (read by convolution_op, just below)
        return super().call(inputs)

    def convolution_op(self, inputs, kernel):
        kernel = tf.convert_to_tensor(kernel)
        return feedback_conv2d(pad_images(inputs, self.pad), kernel,
                               self.feedback_kernel(kernel, self._peek),
                               self.strides[0], self.padding)

    def get_config(self):
        return {**super().get_config(), "learned": self.learned,
                "bw_init": self.bw_init, "seed": self.seed,
                "sign": self.sign}


def make_linear(kind, units, kernel=0, use_bias=True, kernel_feedback=None,
                bw_init="uniform", seed=0, init="glorot_uniform", strides=1,
                padding="same", name=None, dtype=None):
    """A dense or conv layer (blocks, residual units, the output layer):
    plain, or sending errors back through B (`kernel_feedback` "fixed",
    "learned" or one of SIGN_FEEDBACK).  `padding` is "same", "valid" or pixels on every side;
    `dtype` the Keras dtype policy (mixed: W and B stay float32 variables,
    read in the compute dtype inside the layer, so FA/KP's backward
    product dy Bᵀ runs in 16 bits like the rest of the backward pass)."""
    conv = {} if kind == "dense" else dict(
        kernel_size=kernel, strides=strides,
        padding=padding if isinstance(padding, str) else "valid",
        pad=0 if isinstance(padding, str) else padding)
    common = dict(use_bias=use_bias, init=init, name=name, dtype=dtype)
    if kernel_feedback is None:
        if kind == "dense":
            return Dense(units, **common)
        return Conv2D(units, **common, **conv)
    feedback = dict(learned=kernel_feedback == "learned", bw_init=bw_init,
                    seed=seed, sign=kernel_feedback
                    if kernel_feedback in SIGN_FEEDBACK else None)
    if kind == "dense":
        return FeedbackDense(units, **feedback, **common)
    return FeedbackConv2D(units, **feedback, **common, **conv)
