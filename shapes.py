"""Shape and size arithmetic of an arch, without TensorFlow: each op's
output shape, trainable parameters and multiply-adds, so that flags are
checked in milliseconds, before anything is built.

    convolution  out = ⌊(in + 2p − k)/s⌋ + 1   ('valid': p = 0)
                 out = ⌈in/s⌉                   ('same', TensorFlow's)
    pool         out = ⌊(in − k)/s⌋ + 1         (global: the channels)

`check(...)` refuses, with one line, an arch that shrinks its input to
nothing and one whose training would not fit in the machine's memory
(`estimate_bytes`).  The model builds the same shapes (blocks.py); the
tests compare both counts.
"""

from __future__ import annotations

import dataclasses
import math
import os

import arch as arch_lib
from runtime.errors import UsageError

# Per trainable parameter in float32: the weight, its gradient and two
# optimizer moments (Adam); per activation and example: its value, the
# pre-activation kept for the backward pass, and its gradient.
BYTES_PER_PARAMETER = 16
BYTES_PER_ACTIVATION = 12


@dataclasses.dataclass(frozen=True)
class Op:
    """One op of the network as built."""

    block: int  # 1-based; 0 for the output layer
    what: str  # e.g. "conv 5×5 s1 valid", "max pool 2×2 s2", "bn"
    shape: tuple  # output shape of one example: (H, W, C) or (n,)
    params: int = 0  # trainable
    macs: int = 0  # multiply-adds per example
    # Reads a map made inside its own block (a residual unit's second
    # conv): even a direct rule sends the error through it.
    inner: bool = False


def conv_size(size: int, kernel: int, stride: int, padding) -> int:
    if padding == "same":
        return -(-size // stride)
    pad = 0 if padding == "valid" else padding
    return max((size + 2 * pad - kernel) // stride + 1, 0)


def _shrink_error(spec, index, what, before, after):
    where = "×".join(map(str, before))
    return UsageError(
        f"arch token '{spec.token}' (block {index}): its {what} would "
        f"make {after}×{after} maps from {where} inputs (needs at least "
        "1×1); use fewer or smaller kernels, pools and strides, 'same' "
        "padding, or a larger --image_size")


def pool_shape(pool, shape) -> tuple:
    """Output shape of a pool on an (H, W, C) input (a head: on (T, d)
    tokens)."""
    if pool.kind == "head_flat":
        return (math.prod(shape),)
    if pool.kind == "global" or pool.head:
        return (shape[-1],)
    return (*(max((d - pool.size) // pool.stride + 1, 0)
              for d in shape[:2]), shape[2])


def _pool(spec, index, pool, shape):
    if pool.head:
        how = {"head_mean": "mean over tokens", "head_cls": "class token",
               "head_flat": "every token"}[pool.kind]
        return Op(index, f"head: layer norm, {how}", pool_shape(pool, shape),
                  2 * shape[-1])
    if pool.kind == "global":
        return Op(index, "global average pool", pool_shape(pool, shape))
    out = pool_shape(pool, shape)[:2]
    if min(out) < 1:
        raise _shrink_error(spec, index, f"pool {pool.token}", shape,
                           min(out))
    kind = "max" if pool.kind == "max" else "average"
    return Op(index, f"{kind} pool {pool.size}×{pool.size} s{pool.stride}",
              (*out, shape[2]))


def _conv(spec, index, shape, units, kernel, stride, padding, what="conv"):
    out = tuple(conv_size(d, kernel, stride, padding) for d in shape[:2])
    if min(out) < 1:
        raise _shrink_error(spec, index, f"{kernel}×{kernel} convolution",
                            shape, min(out))
    weights = kernel * kernel * shape[2] * units
    bias = units if spec.use_bias else 0
    pad = padding if isinstance(padding, str) else f"pad {padding}"
    return Op(index, f"{what} {kernel}×{kernel} s{stride} {pad}",
              (*out, units), weights + bias, weights * out[0] * out[1])


def _bn(index, shape):
    return Op(index, "bn", shape, 2 * shape[-1])


def block_ops(spec, index, shape) -> list[Op]:
    """The ops of one resolved block, from its input shape."""
    ops = []
    if spec.pre is not None:
        ops.append(_pool(spec, index, spec.pre, shape))
        shape = ops[-1].shape
    if spec.post is not None and spec.post.head:  # (the output layer's)
        spec = dataclasses.replace(spec, post=None)
    if spec.kind == "dense":
        n = math.prod(shape)
        ops.append(Op(index, "dense", (spec.units,), n * spec.units
                      + (spec.units if spec.use_bias else 0), n * spec.units))
        if spec.batch_norm:
            ops.append(_bn(index, ops[-1].shape))
        if spec.layer_norm:
            ops.append(Op(index, "layer norm", ops[-1].shape, 2 * spec.units))
    elif spec.tokens:
        ops += token_ops(spec, index, shape)
    elif spec.kind == "conv":
        ops.append(_conv(spec, index, shape, spec.units, spec.kernel,
                         spec.stride, spec.padding))
        if spec.batch_norm:
            ops.append(_bn(index, ops[-1].shape))
    else:
        ops += _residual_ops(spec, index, shape)
    if spec.post is not None:
        ops.append(_pool(spec, index, spec.post, ops[-1].shape))
    return ops


def _residual_ops(spec, index, shape) -> list[Op]:
    ops = [_conv(spec, index, shape, spec.units, 3, spec.stride, 1)]
    if spec.batch_norm:
        ops.append(_bn(index, ops[-1].shape))
    ops.append(dataclasses.replace(
        _conv(spec, index, ops[-1].shape, spec.units, 3, 1, 1), inner=True))
    if spec.batch_norm:
        ops.append(_bn(index, ops[-1].shape))
    if spec.stride != 1 or shape[2] != spec.units:  # projection shortcut
        ops.append(_conv(spec, index, shape, spec.units, 1, spec.stride, 0,
                         "shortcut conv"))
        if spec.batch_norm:
            ops.append(_bn(index, ops[-1].shape))
    return ops


def _dense_on_tokens(index, what, tokens, width, units, bias, inner=False):
    """A dense map of every token's `width` features to `units`."""
    return Op(index, what, (tokens, units),
              width * units + (units if bias else 0),
              tokens * width * units, inner)


def token_ops(spec, index, shape) -> list[Op]:
    """A patch embedding's, transformer block's or mixer block's ops.

    embed        p×p patches → d (a conv with stride p), + position
                 embeddings (T·d), [+ class token (d)]
    transformer  LN (2d), qkv (d → 3d), attention (2·T²·d multiply-adds:
                 QKᵀ and the weighted sum), out (d → d), LN (2d), MLP
                 d → r·d → d
    mixer        LN, token MLP T → S → T (for each of the d channels),
                 LN, channel MLP d → C → d
    The layers' biases follow the block's; LayerNorms are γ and β."""
    bias = spec.use_bias
    if spec.kind == "embed":
        if len(shape) != 3:
            raise UsageError(f"arch token '{spec.token}' (block {index}): a "
                             "patch embedding needs an image input")
        conv = _conv(spec, index, shape, spec.units, spec.kernel,
                     spec.kernel, "valid", "patch embedding")
        tokens = conv.shape[0] * conv.shape[1] + (1 if spec.cls else 0)
        extra = tokens * spec.units + (spec.units if spec.cls else 0)
        return [dataclasses.replace(conv, shape=(tokens, spec.units),
                                    params=conv.params + extra)]
    tokens, d = shape
    norm = Op(index, "layer norm", (tokens, d), 2 * d, inner=True)
    if spec.kind == "transformer":
        if d % spec.heads:
            raise UsageError(f"arch token '{spec.token}' (block {index}): "
                             f"{spec.heads} heads do not divide the tokens' "
                             f"{d} features")
        hidden = spec.ratio * d
        return [norm,
                _dense_on_tokens(index, "qkv", tokens, d, 3 * d, bias, True),
                Op(index, f"attention {spec.heads} heads", (tokens, d), 0,
                   2 * tokens * tokens * d, True),
                _dense_on_tokens(index, "attention out", tokens, d, d, bias,
                                 True),
                norm,
                _dense_on_tokens(index, "mlp 1", tokens, d, hidden, bias,
                                 True),
                _dense_on_tokens(index, "mlp 2", tokens, hidden, d, bias,
                                 True)]
    s, c = spec.token_hidden, spec.channel_hidden
    return [norm,
            _dense_on_tokens(index, "token mlp 1", d, tokens, s, bias, True),
            _dense_on_tokens(index, "token mlp 2", d, s, tokens, bias, True),
            norm,
            _dense_on_tokens(index, "channel mlp 1", tokens, d, c, bias,
                             True),
            dataclasses.replace(_dense_on_tokens(
                index, "channel mlp 2", tokens, c, d, bias, True),
                shape=(tokens, d))]


def network_ops(text: str, input_shape, target_dim: int,
                batch_norm: bool = False, use_bias: bool = True,
                dropout: float = 0.0) -> list[Op]:
    """Every op of the network (blocks, then the output layer); raises
    UsageError when an op would shrink its maps to nothing."""
    shape = tuple(input_shape)
    ops = []
    specs = arch_lib.parse(text)
    for index, spec in enumerate(specs, start=1):
        spec = spec.resolved(batch_norm, use_bias, dropout)
        ops += block_ops(spec, index, shape)
        shape = ops[-1].shape
    head = arch_lib.output_head(specs)
    if head is not None:  # after the last feedback point: the output's
        ops.append(_pool(None, 0, head, shape))
        shape = ops[-1].shape
    n = math.prod(shape)
    ops.append(Op(0, "output dense", (target_dim,), n * target_dim
                  + (target_dim if use_bias else 0), n * target_dim))
    return ops


def parameter_count(ops) -> int:
    return sum(op.params for op in ops)


def hidden_sizes(ops) -> list[int]:
    """Units of each block's output h_l (what a direct rule projects)."""
    last = {}
    for op in ops:
        if op.block:
            last[op.block] = math.prod(op.shape)
    return [last[b] for b in sorted(last)]


def estimate_bytes(ops, target_dim: int, batch_size: int) -> int:
    """Memory to train: parameters and their optimizer state, the direct
    rules' feedback matrices (n_l × C each), and activations."""
    feedback = sum(hidden_sizes(ops)) * target_dim
    activations = sum(math.prod(op.shape) for op in ops)
    return (BYTES_PER_PARAMETER * (parameter_count(ops) + feedback)
            + BYTES_PER_ACTIVATION * activations * batch_size)


def machine_memory() -> int:
    """Physical memory of this machine in bytes (0 when unknown)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def check(text: str, input_shape, target_dim: int, batch_size: int,
          batch_norm: bool = False, use_bias: bool = True) -> list[Op]:
    """The network's ops; UsageError when its maps shrink to nothing or its
    training would need more than the machine's memory."""
    try:
        ops = network_ops(text, input_shape, target_dim, batch_norm,
                          use_bias)
    except UsageError as error:
        preset = arch_lib.PRESETS.get(text.strip())
        if preset is None:
            raise
        size = preset.input_shape
        raise UsageError(f"{error} ({text} was published on "
                         f"{'×'.join(map(str, size))} inputs: "
                         f"--image_size={size[0]})") from None
    need, have = estimate_bytes(ops, target_dim, batch_size), \
        machine_memory()
    if have and need > have:
        raise UsageError(
            f"{parameter_count(ops):,} parameters: training them needs "
            f"about {need / 2**30:,.0f} GiB (weights, gradients, optimizer "
            f"moments, activations of a batch of {batch_size}), more than "
            f"this machine's {have / 2**30:,.0f} GiB")
    return ops
