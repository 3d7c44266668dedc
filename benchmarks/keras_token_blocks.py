"""Keras' own ViT and MLP-Mixer blocks (MultiHeadAttention,
LayerNormalization, Dense), the baseline that speed.py times the
framework's token blocks against: the same network as the framework's
`--arch` tokens, built from layers the framework did not write."""

from __future__ import annotations

import functools

LAYER_NORM_EPSILON = 1e-5  # token_blocks.py's (PyTorch's)


def keras_embedding(x, spec):
    import keras
    patches = keras.layers.Conv2D(spec.units, spec.kernel, spec.kernel,
                                  "valid", use_bias=spec.use_bias)(x)
    rows, cols = patches.shape[1], patches.shape[2]
    tokens = keras.layers.Reshape((rows * cols, spec.units))(patches)
    return position_embedding(spec.cls)(tokens)


def keras_transformer(x, spec):
    import keras
    width = x.shape[-1]
    y = keras.layers.LayerNormalization(epsilon=LAYER_NORM_EPSILON)(x)
    y = keras.layers.MultiHeadAttention(
        num_heads=spec.heads, key_dim=width // spec.heads,
        use_bias=spec.use_bias)(y, y)
    x = keras.layers.Add()([x, y])
    return _keras_mlp(x, spec.ratio * width, spec.use_bias)


def keras_mixer(x, spec):
    import keras
    tokens = x.shape[1]
    y = keras.layers.LayerNormalization(epsilon=LAYER_NORM_EPSILON)(x)
    y = keras.layers.Permute((2, 1))(y)  # (N, d, T): mix the tokens
    y = keras.layers.Dense(spec.token_hidden, activation="gelu",
                           use_bias=spec.use_bias)(y)
    y = keras.layers.Dense(tokens, use_bias=spec.use_bias)(y)
    x = keras.layers.Add()([x, keras.layers.Permute((2, 1))(y)])
    return _keras_mlp(x, spec.channel_hidden, spec.use_bias)


def _keras_mlp(x, hidden, use_bias):
    """LayerNorm → Dense(hidden, gelu) → Dense(d), plus the input."""
    import keras
    y = keras.layers.LayerNormalization(epsilon=LAYER_NORM_EPSILON)(x)
    y = keras.layers.Dense(hidden, activation="gelu", use_bias=use_bias)(y)
    y = keras.layers.Dense(x.shape[-1], use_bias=use_bias)(y)
    return keras.layers.Add()([x, y])


def keras_head(x, kind):
    import keras
    x = keras.layers.LayerNormalization(epsilon=LAYER_NORM_EPSILON)(x)
    if kind == "head_mean":
        return keras.layers.GlobalAveragePooling1D()(x)
    if kind == "head_cls":
        return keras.layers.Flatten()(
            keras.layers.Cropping1D((0, x.shape[1] - 1))(x))
    return keras.layers.Flatten()(x)


KERAS_TOKEN_BLOCKS = {"embed": keras_embedding,
                      "transformer": keras_transformer,
                      "mixer": keras_mixer}


@functools.cache
def _position_embedding_class():
    import keras

    class PositionEmbedding(keras.layers.Layer):
        """Learned position embeddings added to the tokens (one weight of
        (T, d)); with `cls`, a learned class token prepended first."""

        def __init__(self, cls, **kw):
            super().__init__(**kw)
            self.cls = cls

        def build(self, input_shape):
            tokens, width = input_shape[1] + (1 if self.cls else 0), \
                input_shape[2]
            self.position = self.add_weight(
                shape=(tokens, width), name="position",
                initializer=keras.initializers.TruncatedNormal(stddev=0.02))
            self.class_token = self.add_weight(
                shape=(1, 1, width), name="class_token",
                initializer="zeros") if self.cls else None

        def call(self, tokens):
            if self.class_token is not None:
                first = keras.ops.tile(self.class_token,
                                       (keras.ops.shape(tokens)[0], 1, 1))
                tokens = keras.ops.concatenate([first, tokens], axis=1)
            return tokens + self.position

        def compute_output_shape(self, input_shape):
            return (input_shape[0], input_shape[1] + (1 if self.cls else 0),
                    input_shape[2])

    return PositionEmbedding


def position_embedding(cls):
    return _position_embedding_class()(cls)
