"""Blocks: what one arch token makes (arch.py), from one feedback point to
the next.

    [pool] → dense or conv → [batch norm or LayerNorm] → activation → [pool]
    [pool] → residual unit → [pool]
    patch embedding, transformer or mixer block → [head] (token_blocks.py)

A block's call returns its feedback points, the block output last: one
point, or a transformer's or mixer's three under
`--feedback_points=sublayer` (token_blocks.py), each trained through the
variables of its own segment (`segments`).

A direct rule's teaching signal enters at the block's output; autodiff
carries it through the block's own ops (pools, batch norm, both paths of
a residual unit) to the block's variables.  Chained rules send errors
through every op; FA/KP send them through each dense/conv layer's B.
Dropout is not here: it acts on what the next block reads (model.py),
while a local loss reads the block's own output.
"""

from __future__ import annotations

import dataclasses
import math

import keras
import tensorflow as tf

import arch as arch_lib
from arch_tokens import TOKEN_KINDS, BlockSpec, Pool
import shapes
import token_blocks
from layers import ACTIVATIONS, PACKAGE, make_linear

# Seeds of a residual unit's feedback kernels (FA, KP), added to the
# block's own seed so that no two kernels share one.
_CONV2_SEED, _SHORTCUT_SEED = 1_000_000, 2_000_000


def spec_from_config(spec) -> BlockSpec:
    """A BlockSpec from itself or from its dict (a saved config)."""
    if isinstance(spec, BlockSpec):
        return spec
    spec = dict(spec)
    for side in ("pre", "post"):
        if spec.get(side) is not None:
            spec[side] = Pool(**spec[side])
    return BlockSpec(**spec)


def reshaped_max_pool(h, size):
    """keras' MaxPooling2D(size) (stride size, 'valid') as a max over the
    window axes of a reshape.

    Under XLA on CPU its gradient is elementwise and about 8× faster than
    MaxPoolGrad, which XLA lowers to a scatter (5.5 vs 44 ms at
    128×28×28×16, 2 CPU cores); without XLA the native op is the
    faster one.  Exact ties (measure zero for float inputs) share the
    gradient instead of giving it to the first maximum.  Overlapping
    windows (stride < size) have no such reshape."""
    _, height, width, channels = h.shape
    rows, cols = height // size, width // size
    h = h[:, :rows * size, :cols * size, :]
    windows = tf.reshape(h, (-1, rows, size, cols, size, channels))
    return tf.reduce_max(windows, axis=(2, 4))


def apply_pool(h, pool: Pool, reshape_max: bool = False):
    if pool.kind == "global":
        return tf.reduce_mean(h, axis=(1, 2))
    if pool.kind == "avg":
        return tf.nn.avg_pool2d(h, pool.size, pool.stride, "VALID")
    if reshape_max and pool.stride == pool.size:
        return reshaped_max_pool(h, pool.size)
    return tf.nn.max_pool2d(h, pool.size, pool.stride, "VALID")


class LayerRecord:
    """Of a forward pass, in block order: each dense or conv block's
    (layer output, activation) and each block's output as the next block
    reads it (after dropout).  A plain object: Keras' __call__ would copy
    a list given as an argument."""

    def __init__(self):
        self.pairs, self.outputs = [], []


class _Layers:
    """Builds a block's dense/conv layers and batch norms with the
    block's settings (`--init`, feedback kernels, `--bn_*`)."""

    def __init__(self, kernel_feedback, bw_init, init, bn_momentum,
                 bn_epsilon, dtype=None):
        self.kernel_feedback, self.bw_init, self.init = (
            kernel_feedback, bw_init, init)
        self.bn_momentum, self.bn_epsilon = bn_momentum, bn_epsilon
        self.dtype = dtype  # the block's dtype policy (--precision)

    def linear(self, kind, units, use_bias, seed, kernel=0, strides=1,
               padding="same", name=None):
        return make_linear(kind, units, kernel, use_bias,
                           self.kernel_feedback, self.bw_init, seed,
                           self.init, strides=strides, padding=padding,
                           name=name, dtype=self.dtype)

    def norm(self, name=None):
        # Under a mixed policy Keras' batch norm computes in float32 and
        # keeps γ, β and the moving statistics float32.
        return keras.layers.BatchNormalization(
            momentum=self.bn_momentum, epsilon=self.bn_epsilon, name=name,
            dtype=self.dtype)


class ResidualUnit(keras.layers.Layer):
    """He et al. 2016's basic unit: conv3×3 (stride s, 1 pixel padding) →
    [BN] → act → conv3×3 → [BN], plus the shortcut (the input itself, or a
    1×1 conv with stride s → [BN] when the unit changes the channels or the
    stride), then act."""

    def __init__(self, units, stride, activation, batch_norm, use_bias, seed,
                 make, **kw):
        super().__init__(**kw)
        self.units, self.stride, self.seed = units, stride, seed
        self.use_bias, self.batch_norm, self.make = use_bias, batch_norm, make
        self.activation = ACTIVATIONS[activation]
        self.conv1 = make.linear("conv", units, use_bias, seed, 3, stride, 1,
                                 name="conv1")
        self.conv2 = make.linear("conv", units, use_bias, seed + _CONV2_SEED,
                                 3, 1, 1, name="conv2")
        self.bn1 = make.norm("bn1") if batch_norm else None
        self.bn2 = make.norm("bn2") if batch_norm else None
        self.shortcut = self.shortcut_bn = None  # known once built

    def build(self, input_shape):
        if self.built:
            return
        if self.stride != 1 or input_shape[-1] != self.units:
            self.shortcut = self.make.linear(
                "conv", self.units, self.use_bias,
                self.seed + _SHORTCUT_SEED, 1, self.stride, 0,
                name="shortcut")
            self.shortcut.build(input_shape)
            if self.batch_norm:
                self.shortcut_bn = self.make.norm("shortcut_bn")
                self.shortcut_bn.build(
                    self.shortcut.compute_output_shape(input_shape))
        self.conv1.build(input_shape)
        shape = self.conv1.compute_output_shape(input_shape)
        self.conv2.build(shape)
        for norm in (self.bn1, self.bn2):
            if norm is not None:
                norm.build(shape)
        self.built = True

    def call(self, x, training=False):
        a = self.conv1(x)
        if self.bn1 is not None:
            a = self.bn1(a, training=training)
        a = self.conv2(self.activation(a))
        if self.bn2 is not None:
            a = self.bn2(a, training=training)
        shortcut = x
        if self.shortcut is not None:
            shortcut = self.shortcut(x)
            if self.shortcut_bn is not None:
                shortcut = self.shortcut_bn(shortcut, training=training)
        return self.activation(a + shortcut)

    def compute_output_shape(self, input_shape):
        return self.conv1.compute_output_shape(input_shape)

    @property
    def linear_layers(self):
        return [("conv1", self.conv1), ("conv2", self.conv2)] + (
            [("shortcut", self.shortcut)] if self.shortcut is not None
            else [])


@keras.saving.register_keras_serializable(PACKAGE)
class Block(keras.layers.Layer):
    """One block of a resolved BlockSpec (every option set).

    `kernel_feedback` is None for ordinary layers, "fixed" or "learned"
    for layers that send their error back through B (FA, KP)."""

    def __init__(self, spec, activation="tanh", kernel_feedback=None,
                 bw_init="uniform", seed=0, init="glorot_uniform",
                 bn_momentum=0.9, bn_epsilon=1e-3, feedback_points="block",
                 **kw):
        super().__init__(**kw)
        self.spec = spec_from_config(spec)
        self.settings = dict(activation=activation,
                             kernel_feedback=kernel_feedback,
                             bw_init=bw_init, seed=seed, init=init,
                             bn_momentum=bn_momentum, bn_epsilon=bn_epsilon,
                             feedback_points=feedback_points)
        # Its layers compute in the block's own dtype policy (`dtype`,
        # saved with its config): a mixed one under --precision=mixed_*.
        make = _Layers(kernel_feedback, bw_init, init, bn_momentum,
                       bn_epsilon, self.dtype_policy)
        s = self.spec
        self.unit = self.layer = self.norm = self.head_norm = None
        self.sublayer = (feedback_points == "sublayer"
                         and s.kind in ("transformer", "mixer"))
        if s.kind in ("residual", *TOKEN_KINDS):
            self.unit = _unit(s, activation, seed, make,
                              dtype=self.dtype_policy)
        else:
            self.layer = make.linear(s.kind, s.units, s.use_bias, seed,
                                     s.kernel, s.stride, s.padding)
            self.norm = (token_blocks.layer_norm(None, self.dtype_policy)
                         if s.layer_norm else
                         make.norm() if s.batch_norm else None)
        if s.pre is not None and s.pre.head:  # (a last block's head is
            self.head_norm = token_blocks.layer_norm(  # the output layer's)
                "head_norm", self.dtype_policy)
        self.activation = ACTIVATIONS[activation]
        # Set by ProjectionModel.compile: the max pool that is fast under
        # the step's compiler (see `reshaped_max_pool`).
        self.reshape_pool = False

    @property
    def dropout(self) -> float:
        return self.spec.dropout or 0.0

    @property
    def linear_layers(self) -> list:
        """[(name, dense or conv layer)] of the block, for diagnostics."""
        if self.unit is not None:
            return [(f"{self.name}_{part}", layer)
                    for part, layer in self.unit.linear_layers]
        return [(self.name, self.layer)]

    @property
    def tap_names(self) -> list[str]:
        """Its feedback points' names, the block output (its name) last."""
        if not self.sublayer:
            return [self.name]
        return [f"{self.name}_{suffix}"
                for suffix in self.unit.tap_suffixes] + [self.name]

    def segments(self) -> list[list]:
        """The variables each feedback point trains (a direct rule's
        signal at point k reaches only segment k), in tap order."""
        if not self.sublayer:
            return [self.trainable_variables]
        return self.unit.segments()

    def tap_shapes(self, input_shape) -> list[tuple]:
        """The shapes of its feedback points (`call`'s list)."""
        if not self.sublayer:
            return [self.compute_output_shape(input_shape)]
        shapes_ = self.unit.tap_shapes(self._core_input_shape(input_shape),
                                       sublayer=True)
        return [*shapes_[:-1], self.compute_output_shape(input_shape)]

    def _core_input_shape(self, shape):
        """The input shape of the block's layer (after its opening pool,
        flattened for a dense layer)."""
        shape = tuple(shape)
        if self.spec.pre is not None:
            shape = (shape[0], *shapes.pool_shape(self.spec.pre, shape[1:]))
        if self.spec.kind == "dense" and len(shape) > 2:
            shape = (shape[0], math.prod(shape[1:]))
        return shape

    def build(self, input_shape):
        if self.built:
            return
        if self.head_norm is not None:
            self.head_norm.build(input_shape)
        shape = self._core_input_shape(input_shape)
        core = self.unit or self.layer
        core.build(shape)
        if self.norm is not None:
            self.norm.build(core.compute_output_shape(shape))
        self.built = True

    def call(self, x, training=False, probe=None, record=None):
        """[feedback points], the block output last; `probe` (a
        forward-mode probe) sees each point as it is made; `record` (a
        LayerRecord) gets a dense or conv block's (layer output,
        activation)."""
        if self.head_norm is not None:
            x = token_blocks.apply_head(x, self.spec.pre.kind,
                                        self.head_norm)
        elif self.spec.pre is not None:
            x = apply_pool(x, self.spec.pre, self.reshape_pool)
        if self.spec.kind == "dense" and len(x.shape) > 2:
            x = tf.reshape(x, (-1, math.prod(x.shape[1:])))
        taps = []
        if self.spec.tokens:
            *taps, h = self.unit(x, training=training, probe=probe,
                                 sublayer=self.sublayer)
        elif self.unit is not None:
            h = self.unit(x, training=training)
        else:
            a = self.layer(x)
            if self.norm is not None:
                a = self.norm(a, training=training)
            h = self.activation(a)
            if record is not None:
                record.pairs.append((a, h))
        if self.spec.post is not None and not self.spec.post.head:
            h = apply_pool(h, self.spec.post, self.reshape_pool)
        return [*taps, h if probe is None else probe.perturb(h)]

    def compute_output_shape(self, input_shape):
        shape = self._core_input_shape(input_shape)
        shape = (self.unit or self.layer).compute_output_shape(shape)
        if self.spec.post is not None and not self.spec.post.head:
            shape = (shape[0], *shapes.pool_shape(self.spec.post, shape[1:]))
        return tuple(shape)

    def get_config(self):
        return {**super().get_config(), **self.settings,
                "spec": dataclasses.asdict(self.spec)}


def _unit(spec, activation, seed, make, dtype):
    """The layer of a block made of several (a residual unit, a patch
    embedding, a transformer or mixer block)."""
    common = dict(name="unit", dtype=dtype)
    if spec.kind == "residual":
        return ResidualUnit(spec.units, spec.stride, activation,
                            spec.batch_norm, spec.use_bias, seed, make,
                            **common)
    if spec.kind == "embed":
        return token_blocks.PatchEmbedding(spec.units, spec.kernel, spec.cls,
                                           spec.use_bias, seed, make,
                                           **common)
    if spec.kind == "transformer":
        return token_blocks.TransformerUnit(spec.heads, spec.ratio,
                                            spec.use_bias, seed, make,
                                            **common)
    return token_blocks.MixerUnit(spec.token_hidden, spec.channel_hidden,
                                  spec.use_bias, seed, make, **common)


def blocks_from_arch(arch: str, batch_norm=False, use_bias=True, dropout=0.0,
                     seed=0, **block_kw) -> list[Block]:
    """One Block per parsed arch spec, its options resolved against the
    global flags; each block gets its own feedback seed."""
    return [Block(spec.resolved(batch_norm, use_bias, dropout),
                  seed=seed * 1000 + index, name=f"block{index + 1}",
                  **block_kw)
            for index, spec in enumerate(arch_lib.parse(arch))]
