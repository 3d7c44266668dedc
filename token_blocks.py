"""Blocks on tokens (arch.py's E, T and M): a patch embedding, the
transformer encoder block (pre-norm, as in ViT) and the MLP-Mixer block.

Each unit runs as one block of blocks.py, whose output is a feedback
point.  Under `--feedback_points=sublayer` a transformer or mixer block
has three, each with its own projection (Launay et al. 2020's "micro"
DFA, their `--dfa full`):

    x ─ LN ─ attention ─(+x)─ t1 ─ LN ─ fc1 ─ GELU ─ m ─ fc2 ─(+t1)─ t3
                              ▲ point 1             ▲ point 2      ▲ 3

(a mixer: the token-mixing MLP in place of attention, the channel-mixing
MLP in place of the MLP).  A point's teaching signal trains the variables
between it and the point before (its *segment*: `segments`): t1's the
first LayerNorm, qkv and the attention's output map; m's the second
LayerNorm and fc1; t3's fc2.  It reaches them through the true
derivatives of the segment's ops (LayerNorm, softmax, GELU, the residual
sum), never through another segment.  Under `block`
(the default) the block output is the only point, and the signal reaches
every variable of the block through all of them (their "macro" mode).

Chained rules (bp, fa, kp) send errors back through every op; fa and kp
through B in place of W in every weight map (the patches' map, qkv, the
attention's output, both layers of each MLP).  The `--activation` flag
does not apply here: the MLPs use GELU (exact, erf), as ViT and Mixer do.
LayerNorm's epsilon is 1e-5 (PyTorch's).
"""

from __future__ import annotations

import keras
import tensorflow as tf

LAYER_NORM_EPSILON = 1e-5
POSITION_STDDEV = 0.02  # ViT's position embeddings: a truncated normal
# Offsets of the block's seed for each weight map's feedback kernel (FA,
# KP), so that no two kernels of a network share one.
_SEEDS = {"qkv": 1_000_000, "out": 2_000_000, "fc1": 3_000_000,
          "fc2": 4_000_000}


def layer_norm(name, dtype):
    return keras.layers.LayerNormalization(epsilon=LAYER_NORM_EPSILON,
                                           name=name, dtype=dtype)


def gelu(x):
    return tf.nn.gelu(x, approximate=False)


def perturbed(t, probe):
    """A feedback point seen by fdfa's forward-mode probe (in order)."""
    return t if probe is None else probe.perturb(t)


class PatchEmbedding(keras.layers.Layer):
    """p×p patches (a 'valid' convolution of stride p: a linear map of
    each patch), as tokens (N, T, d), [a class token first], plus learned
    position embeddings."""

    def __init__(self, width, patch, cls, use_bias, seed, make, **kw):
        super().__init__(**kw)
        self.width, self.patch, self.cls = width, patch, cls
        self.patches = make.linear("conv", width, use_bias, seed, patch,
                                   patch, "valid", name="patches")

    def build(self, input_shape):
        if self.built:
            return
        self.patches.build(input_shape)
        _, rows, cols, _ = self.patches.compute_output_shape(input_shape)
        tokens = rows * cols + (1 if self.cls else 0)
        self.position = self.add_weight(
            name="position", shape=(tokens, self.width),
            initializer=keras.initializers.TruncatedNormal(
                stddev=POSITION_STDDEV))
        self.class_token = self.add_weight(
            name="class_token", shape=(1, 1, self.width),
            initializer="zeros") if self.cls else None
        self.built = True

    def call(self, x, training=False, probe=None, sublayer=False):
        maps = self.patches(x)
        t = tf.reshape(maps, (-1, maps.shape[1] * maps.shape[2],
                              self.width))
        if self.class_token is not None:
            cls = tf.tile(self.class_token, (tf.shape(t)[0], 1, 1))
            t = tf.concat([tf.cast(cls, t.dtype), t], axis=1)
        return [t + tf.cast(self.position, t.dtype)]

    def compute_output_shape(self, input_shape):
        _, rows, cols, _ = self.patches.compute_output_shape(input_shape)
        return (input_shape[0], rows * cols + (1 if self.cls else 0),
                self.width)

    @property
    def linear_layers(self):
        return [("patches", self.patches)]

    def segments(self):
        return [self.trainable_variables]

    def tap_shapes(self, input_shape, sublayer=False):
        return [self.compute_output_shape(input_shape)]


class _Residual2(keras.layers.Layer):
    """Two residual sublayers, each LN → (a mixing map) → + input: the
    shape a transformer and a mixer block share; subclasses say what the
    first mixes (`mix`) and how wide the second's hidden layer is."""

    tap_suffixes = ("first", "mlp")

    def __init__(self, use_bias, seed, make, **kw):
        super().__init__(**kw)
        self.use_bias, self.seed, self.make = use_bias, seed, make
        self.norm1 = layer_norm("norm1", self.dtype_policy)
        self.norm2 = layer_norm("norm2", self.dtype_policy)
        self.fc1 = self.fc2 = None  # their widths are known once built

    def linear(self, seed_key, units, name=None):
        return self.make.linear("dense", units, self.use_bias,
                                self.seed + _SEEDS[seed_key],
                                name=name or seed_key)

    def build(self, input_shape):
        if self.built:
            return
        width = input_shape[-1]
        self.norm1.build(input_shape)
        self.build_mix(input_shape)
        self.norm2.build(input_shape)
        self.fc1 = self.linear("fc1", self.hidden_width(width))
        self.fc2 = self.linear("fc2", width)
        self.fc1.build(input_shape)
        self.fc2.build((*input_shape[:-1], self.hidden_width(width)))
        self.built = True

    def call(self, x, training=False, probe=None, sublayer=False):
        t1 = x + self.mix(self.norm1(x))
        if sublayer:
            t1 = perturbed(t1, probe)
        m = gelu(self.fc1(self.norm2(t1)))
        if sublayer:
            m = perturbed(m, probe)
        return [t1, m, t1 + self.fc2(m)] if sublayer else [t1 + self.fc2(m)]

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def tap_shapes(self, input_shape, sublayer=False):
        if not sublayer:
            return [tuple(input_shape)]
        hidden = (*input_shape[:-1], self.hidden_width(input_shape[-1]))
        return [tuple(input_shape), hidden, tuple(input_shape)]

    def segments(self):
        """The variables each feedback point trains under `sublayer`."""
        return [self.norm1.trainable_variables + self.mix_variables(),
                self.norm2.trainable_variables + self.fc1.trainable_variables,
                self.fc2.trainable_variables]


class TransformerUnit(_Residual2):
    """ViT's encoder block (pre-norm): t1 = x + MSA(LN(x)),
    out = t1 + W2 GELU(W1 LN(t1)); multi-head self-attention with `heads`
    heads of d/heads features, softmax(q kᵀ/√(d/heads)) v, one qkv map
    (d → 3d) and an output map (d → d)."""

    tap_suffixes = ("attention", "mlp")

    def __init__(self, heads, ratio, use_bias, seed, make, **kw):
        super().__init__(use_bias, seed, make, **kw)
        self.heads, self.ratio = heads, ratio
        self.qkv = self.out = None

    def hidden_width(self, width):
        return self.ratio * width

    def build_mix(self, input_shape):
        width = input_shape[-1]
        self.qkv = self.linear("qkv", 3 * width)
        self.out = self.linear("out", width)
        self.qkv.build(input_shape)
        self.out.build(input_shape)

    def mix(self, x):
        return self.out(attention(self.qkv(x), self.heads))

    def mix_variables(self):
        return self.qkv.trainable_variables + self.out.trainable_variables

    @property
    def linear_layers(self):
        return [("qkv", self.qkv), ("out", self.out), ("fc1", self.fc1),
                ("fc2", self.fc2)]


def attention(qkv, heads):
    """Multi-head self-attention of (N, T, 3d) queries, keys and values;
    the softmax in float32 (the identity under float32)."""
    tokens, width = qkv.shape[1], qkv.shape[2] // 3
    size = width // heads

    def split(t):  # (N, T, d) → (N, heads, T, d/heads)
        return tf.transpose(tf.reshape(t, (-1, tokens, heads, size)),
                            (0, 2, 1, 3))
    q, k, v = (split(t) for t in tf.split(qkv, 3, axis=-1))
    scores = tf.matmul(q, k, transpose_b=True) / tf.cast(
        tf.sqrt(float(size)), q.dtype)
    weights = tf.cast(tf.nn.softmax(tf.cast(scores, tf.float32), axis=-1),
                      v.dtype)
    mixed = tf.transpose(tf.matmul(weights, v), (0, 2, 1, 3))
    return tf.reshape(mixed, (-1, tokens, width))


class MixerUnit(_Residual2):
    """MLP-Mixer's block: t1 = x + (W_t2 GELU(W_t1 LN(x)ᵀ))ᵀ mixing the
    tokens of each channel (hidden width S), out = t1 + W2 GELU(W1 LN(t1))
    mixing the channels of each token (hidden width C)."""

    tap_suffixes = ("tokens", "mlp")

    def __init__(self, token_hidden, channel_hidden, use_bias, seed, make,
                 **kw):
        super().__init__(use_bias, seed, make, **kw)
        self.token_hidden, self.channel_hidden = token_hidden, channel_hidden
        self.token1 = self.token2 = None

    def hidden_width(self, width):
        return self.channel_hidden

    def build_mix(self, input_shape):
        tokens = input_shape[1]
        across = (input_shape[0], input_shape[2], tokens)
        self.token1 = self.linear("qkv", self.token_hidden, "token1")
        self.token2 = self.linear("out", tokens, "token2")
        self.token1.build(across)
        self.token2.build((*across[:-1], self.token_hidden))

    def mix(self, x):
        across = tf.transpose(x, (0, 2, 1))  # (N, d, T): mix the tokens
        mixed = self.token2(gelu(self.token1(across)))
        return tf.transpose(mixed, (0, 2, 1))

    def mix_variables(self):
        return (self.token1.trainable_variables
                + self.token2.trainable_variables)

    @property
    def linear_layers(self):
        return [("token1", self.token1), ("token2", self.token2),
                ("fc1", self.fc1), ("fc2", self.fc2)]


def apply_head(t, kind, norm):
    """A token network's head: LayerNorm, then the mean over the tokens,
    the class token (the first) or every token, flattened."""
    t = norm(t)
    if kind == "head_mean":
        return tf.reduce_mean(t, axis=1)
    if kind == "head_cls":
        return t[:, 0]
    return tf.reshape(t, (-1, t.shape[1] * t.shape[2]))
