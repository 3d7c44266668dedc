"""Token networks (patch embedding, transformer and mixer blocks, heads)
worked out by hand in numpy (float64), independent of TensorFlow.

Each op has `forward(x)` and `backward(dy, key)` as in reference.py: the
backward returns the error at the op's input and fills `self.grads`; `key`
says which matrix a weight map sends errors back through, "W" (backprop)
or "B" (feedback alignment).  Ops without weights ignore it.

A transformer or mixer block has three feedback points under
`--feedback_points=sublayer` (token_blocks.py):

    t1 = x + mix(LN1(x));  m = GELU(fc1(LN2(t1)));  out = t1 + fc2(m)

and each point's signal trains its own segment only
(`TokenBlock.segment_backward`): t1's LN1 and the mixing maps, m's LN2
and fc1, out's fc2.
"""

from __future__ import annotations

import math

import numpy as np

import reference
from reference import back, error, local_signal, run

LAYER_NORM_EPSILON = 1e-5  # token_blocks.py's (PyTorch's)
_ERF = np.vectorize(math.erf)  # (scipy is no dependency of the project)


class LayerNorm:
    """γ (x − μ)/σ + β over the last axis, σ = √(var + ε)."""

    def __init__(self, gamma, beta, epsilon=LAYER_NORM_EPSILON):
        self.gamma, self.beta, self.epsilon = gamma, beta, epsilon

    def forward(self, x):
        mean = x.mean(-1, keepdims=True)
        self.sigma = np.sqrt(x.var(-1, keepdims=True) + self.epsilon)
        self.xhat = (x - mean) / self.sigma
        return self.gamma * self.xhat + self.beta

    def backward(self, dy, key="W"):
        lead = tuple(range(dy.ndim - 1))
        self.grads = {"gamma": (dy * self.xhat).sum(lead),
                      "beta": dy.sum(lead)}
        g = dy * self.gamma
        return (g - g.mean(-1, keepdims=True) - self.xhat * (
            g * self.xhat).mean(-1, keepdims=True)) / self.sigma


class Gelu:
    """x Φ(x), Φ the standard normal CDF (exact, with erf)."""

    def forward(self, x):
        self.x = x
        return 0.5 * x * (1 + _ERF(x / math.sqrt(2)))

    def backward(self, dy, key="W"):
        x = self.x
        cdf = 0.5 * (1 + _ERF(x / math.sqrt(2)))
        pdf = np.exp(-x ** 2 / 2) / math.sqrt(2 * math.pi)
        return dy * (cdf + x * pdf)


class TokenDense:
    """reference.Dense on the last axis of (N, T, d): every token (or
    channel) one row of the product."""

    def __init__(self, W, b=None, B=None):
        self.dense = reference.Dense(W, b, B)

    def forward(self, x):
        self.lead = x.shape[:-1]
        y = self.dense.forward(x.reshape(-1, x.shape[-1]))
        return y.reshape(*self.lead, -1)

    def backward(self, dy, key="W"):
        dx = self.dense.backward(dy.reshape(-1, dy.shape[-1]), key)
        self.grads = self.dense.grads
        return dx.reshape(*self.lead, -1)


class Transpose:
    """(N, a, b) → (N, b, a): the mixer's token mixing reads columns."""

    def forward(self, x):
        return x.transpose(0, 2, 1)

    def backward(self, dy, key="W"):
        return dy.transpose(0, 2, 1)


class Attention:
    """Multi-head self-attention of (N, T, 3d) [q | k | v]: heads of
    s = d/heads features, softmax(q kᵀ/√s) v, heads concatenated."""

    def __init__(self, heads):
        self.heads = heads

    def split(self, t):  # (N, T, d) → (N, heads, T, s)
        n, tokens, _ = t.shape
        return t.reshape(n, tokens, self.heads, -1).transpose(0, 2, 1, 3)

    def merge(self, t):  # (N, heads, T, s) → (N, T, d)
        n, _, tokens, _ = t.shape
        return t.transpose(0, 2, 1, 3).reshape(n, tokens, -1)

    def forward(self, qkv):
        q, k, v = (self.split(t) for t in np.split(qkv, 3, axis=-1))
        self.scale = 1 / math.sqrt(q.shape[-1])
        scores = q @ k.transpose(0, 1, 3, 2) * self.scale
        scores -= scores.max(-1, keepdims=True)
        a = np.exp(scores)
        self.a = a / a.sum(-1, keepdims=True)
        self.q, self.k, self.v = q, k, v
        return self.merge(self.a @ v)

    def backward(self, dy, key="W"):
        do, a = self.split(dy), self.a
        da = do @ self.v.transpose(0, 1, 3, 2)
        dv = a.transpose(0, 1, 3, 2) @ do
        ds = a * (da - (da * a).sum(-1, keepdims=True)) * self.scale
        dq, dk = ds @ self.k, ds.transpose(0, 1, 3, 2) @ self.q
        return np.concatenate([self.merge(t) for t in (dq, dk, dv)], -1)


class PatchEmbedding:
    """p×p patches (reference.Conv, 'valid', stride p) as tokens (N, T, d),
    [a class token first], plus position embeddings."""

    def __init__(self, conv, position, class_token=None):
        self.conv, self.position = conv, position
        self.class_token = class_token

    def forward(self, x):
        maps = self.conv.forward(x)
        self.maps_shape = maps.shape
        t = maps.reshape(len(x), -1, maps.shape[-1])
        if self.class_token is not None:
            cls = np.broadcast_to(self.class_token, (len(x), 1, t.shape[-1]))
            t = np.concatenate([cls, t], axis=1)
        return t + self.position

    def backward(self, dy, key="W"):
        self.grads = {"position": dy.sum(0)}
        if self.class_token is not None:
            self.grads["class_token"] = dy[:, :1].sum(0, keepdims=True)
            dy = dy[:, 1:]
        return self.conv.backward(dy.reshape(self.maps_shape), key)


class TokenBlock:
    """A transformer or mixer block: `mix` the ops of the first residual
    sublayer's branch (after LN1), then LN2 → fc1 → GELU → fc2."""

    def __init__(self, norm1, mix, norm2, fc1, fc2):
        self.branch1 = [norm1, *mix]
        self.branch2 = [norm2, fc1, Gelu()]
        self.fc2 = fc2

    def forward(self, x):
        self.t1 = x + run(self.branch1, x)
        self.m = run(self.branch2, self.t1)
        self.out = self.t1 + self.fc2.forward(self.m)
        return self.out

    def points(self, sublayer):
        """Its feedback points: [t1, m, out] under sublayer, else [out]."""
        return [self.t1, self.m, self.out] if sublayer else [self.out]

    def backward(self, dy, key="W"):
        """Every op: both residual sums carry dy past their branch."""
        dt1 = dy + back(self.branch2, self.fc2.backward(dy, key), key)
        return dt1 + back(self.branch1, dt1, key)

    def segment_backward(self, index, signal):
        """A sublayer point's signal through its own segment's ops only,
        stopping at the segment's input (and the output point's residual
        input t1 is not differentiated)."""
        if index == 0:
            back(self.branch1, signal)
        elif index == 1:
            back(self.branch2, signal)
        else:
            self.fc2.backward(signal)


def transformer(norm1, qkv, heads, out):
    """A transformer block, given its first sublayer: the rest (LN2, fc1,
    fc2) completes it."""
    mix = [qkv, Attention(heads), out]
    return lambda norm2, fc1, fc2: TokenBlock(norm1, mix, norm2, fc1, fc2)


def mixer(norm1, token1, token2):
    """A mixer block, given its token-mixing sublayer (as transformer)."""
    mix = [Transpose(), token1, Gelu(), token2, Transpose()]
    return lambda norm2, fc1, fc2: TokenBlock(norm1, mix, norm2, fc1, fc2)


class Head:
    """LayerNorm, then the mean over the tokens ("head_mean"), the class
    token ("head_cls") or every token flattened ("head_flat")."""

    def __init__(self, kind, norm):
        self.kind, self.norm = kind, norm

    def forward(self, x):
        t = self.norm.forward(x)
        self.shape = t.shape
        if self.kind == "head_mean":
            return t.mean(1)
        if self.kind == "head_cls":
            return t[:, 0]
        return t.reshape(len(t), -1)

    def backward(self, dy, key="W"):
        if self.kind == "head_mean":
            dt = np.broadcast_to(dy[:, None] / self.shape[1], self.shape)
        elif self.kind == "head_cls":
            dt = np.zeros(self.shape)
            dt[:, 0] = dy
        else:
            dt = dy.reshape(self.shape)
        return self.norm.backward(dt)


class TokenNet:
    """blocks: a PatchEmbedding then TokenBlocks; head: a Head or None;
    output: a reference.Dense.  `hidden` holds every feedback point."""

    def __init__(self, blocks, head, output, sublayer=False):
        self.blocks, self.head, self.output = blocks, head, output
        self.sublayer = sublayer

    def block_points(self, block):
        if isinstance(block, TokenBlock):
            return block.points(self.sublayer)
        return [block.out]

    def forward(self, x):
        self.hidden = []
        for block in self.blocks:
            x = block.out = block.forward(x)
            self.hidden += self.block_points(block)
        if self.head is not None:
            x = self.head.forward(x)
        return self.output.forward(x)

    def output_stage(self, e, key="W"):
        """The output layer's and the head's gradients: L's own (through
        B_o under FA/KP, whose chain runs through it); the error that
        reaches the last block."""
        dx = self.output.backward(e, key)
        return dx if self.head is None else self.head.backward(dx, key)


def chained(net, x, y, key):
    """BP (key "W") or FA/KP ("B"): the error through every op."""
    dy = net.output_stage(error(net.forward(x), y), key)
    for block in reversed(net.blocks):
        dy = block.backward(dy, key)


def direct(net, x, y, rule, projections, signals=None):
    """Direct rules: each feedback point's signal (reference.local_signal,
    or `signals` given) through its block's ops (block placement) or its
    own segment's (sublayer); returns ∂ℓ/∂B of every point, in order."""
    e = error(net.forward(x), y)
    net.output_stage(e)
    points = iter(range(len(net.hidden)))
    feedback = []
    for block in net.blocks:
        for index, _ in enumerate(net.block_points(block)):
            point = next(points)
            h = net.hidden[point]
            if signals is None:
                dh, db = local_signal(rule, projections[point], h, e, y)
                feedback.append(db)
            else:
                dh = signals[point]
            dh = dh.reshape(h.shape)
            if net.sublayer and isinstance(block, TokenBlock):
                block.segment_backward(index, dh)
            else:
                block.backward(dh)
    return feedback
