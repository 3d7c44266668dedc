"""Each rule's update worked out by hand in numpy (float64), independent of
TensorFlow: forward pass, teaching signals, weight gradients.

Networks are tanh blocks (dense or 'same' stride-1 conv, optional 2×2 max
pool) and a dense output layer; softmax + cross-entropy (batch mean).
The token blocks (patch embedding, attention with its softmax, LayerNorm,
GELU, token mixing, heads) are in reference_tokens.py, built on this
module's ops.
"""

from __future__ import annotations

import numpy as np


def assert_close(actual, expected, what):
    """A float32 step against its float64 reference: the tolerance of every
    one-step test."""
    np.testing.assert_allclose(np.asarray(actual), expected, rtol=2e-4,
                               atol=2e-6, err_msg=what)


def random_batch(shape, classes, n=6, seed=1):
    """A seeded batch for one-step tests: inputs N(0, 1) of `shape` per
    example, one-hot labels over `classes` (float32 numpy arrays)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, *shape)).astype("float32")
    y = np.eye(classes, dtype="float32")[rng.integers(0, classes, n)]
    return x, y


# --- Layer math ---------------------------------------------------------------


def conv_same(x, k):
    """x (N,H,W,C) * k (kh,kw,C,F), 'same' padding, stride 1."""
    kh, kw = k.shape[:2]
    ph, pw = kh // 2, kw // 2
    xp = np.pad(x, ((0, 0), (ph, kh - 1 - ph), (pw, kw - 1 - pw), (0, 0)))
    n, h, w, _ = x.shape
    out = np.zeros((n, h, w, k.shape[3]))
    for i in range(kh):
        for j in range(kw):
            out += np.einsum("nhwc,cf->nhwf", xp[:, i:i + h, j:j + w], k[i, j])
    return out


def conv_grad_kernel(x, da, kshape):
    kh, kw = kshape[:2]
    ph, pw = kh // 2, kw // 2
    xp = np.pad(x, ((0, 0), (ph, kh - 1 - ph), (pw, kw - 1 - pw), (0, 0)))
    n, h, w, _ = x.shape
    g = np.zeros(kshape)
    for i in range(kh):
        for j in range(kw):
            g[i, j] = np.einsum("nhwc,nhwf->cf", xp[:, i:i + h, j:j + w], da)
    return g


def conv_grad_input(da, k, xshape):
    """Transposed convolution: what reaches x when da is sent back through
    kernel k."""
    kh, kw = k.shape[:2]
    ph, pw = kh // 2, kw // 2
    n, h, w, c = xshape
    dxp = np.zeros((n, h + kh - 1, w + kw - 1, c))
    for i in range(kh):
        for j in range(kw):
            dxp[:, i:i + h, j:j + w] += np.einsum("nhwf,cf->nhwc", da,
                                                 k[i, j])
    return dxp[:, ph:ph + h, pw:pw + w]


def maxpool2(h):
    n, hh, ww, c = h.shape
    blocks = h.reshape(n, hh // 2, 2, ww // 2, 2, c)
    out = blocks.max(axis=(2, 4))
    mask = blocks == out[:, :, None, :, None, :]
    return out, mask


def maxpool2_grad(dout, mask):
    n, h2, _, w2, _, c = mask.shape
    return (mask * dout[:, :, None, :, None, :]).reshape(n, 2 * h2, 2 * w2, c)


def softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


# --- A network ------------------------------------------------------------------


class Net:
    """layers: dicts with kind ('dense'|'conv'), W, b, pool (bool), and for
    FA/KP a backward kernel 'B'; output: dict with W, b (and 'B')."""

    def __init__(self, layers, output):
        self.layers, self.output = layers, output

    def forward(self, x):
        self.cache = []
        for layer in self.layers:
            if layer["kind"] == "dense":
                x = x.reshape(len(x), -1)
                a = x @ layer["W"] + layer["b"]
            else:
                a = conv_same(x, layer["W"]) + layer["b"]
            h = np.tanh(a)
            mask = None
            if layer.get("pool"):
                h, mask = maxpool2(h)
            self.cache.append(dict(x=x, a=a, h=h, mask=mask))
            x = h
        self.h_last = x.reshape(len(x), -1)
        return self.h_last @ self.output["W"] + self.output["b"]

    def block_grads(self, index, dh):
        """(dW, db, da) of block `index` given the signal dh at its output."""
        layer, c = self.layers[index], self.cache[index]
        dh = dh.reshape(c["h"].shape)
        if c["mask"] is not None:
            dh = maxpool2_grad(dh, c["mask"])
        da = dh * (1 - np.tanh(c["a"]) ** 2)
        if layer["kind"] == "dense":
            return c["x"].T @ da, da.sum(0), da
        return (conv_grad_kernel(c["x"], da, layer["W"].shape),
                da.sum((0, 1, 2)), da)

    def send_back(self, index, da, kernel):
        """Signal reaching block index-1's output through `kernel`."""
        c = self.cache[index]
        if self.layers[index]["kind"] == "dense":
            return da @ kernel.T
        return conv_grad_input(da, kernel, c["x"].shape)


def error(z, y):
    """e = ∂L/∂z for mean softmax cross-entropy."""
    return (softmax(z) - y) / len(z)


def chained_grads(net, x, y, use_backward_kernel):
    """BP (W sends errors back) or FA/KP (B sends them back)."""
    e = error(net.forward(x), y)
    out = net.output
    grads = {"out": (net.h_last.T @ e, e.sum(0))}
    key = "B" if use_backward_kernel else "W"
    dh = e @ out[key].T
    for index in reversed(range(len(net.layers))):
        dw, db, da = net.block_grads(index, dh)
        grads[index] = (dw, db)
        if index > 0:
            dh = net.send_back(index, da, net.layers[index][key])
    return grads


def local_signal(rule, p_weights, h, e, y):
    """δ_l = ∂ℓ_l/∂h_l and ∂ℓ_l/∂B_l for a direct rule."""
    n = len(h)
    hf = h.reshape(n, -1)
    p = hf @ p_weights
    if rule in ("dfa", "dkp", "fdfa"):
        dp = e
    elif rule == "drtp":
        dp = -y / n
    elif rule == "cce":
        dp = (softmax(p) - y) / n
    elif rule == "mse":
        g = softmax(p)
        dg = 2 * (g - y) / g.size
        dp = g * (dg - (dg * g).sum(1, keepdims=True))
    else:
        raise ValueError(rule)
    return dp @ p_weights.T, hf.T @ dp


def direct_grads(net, x, y, rule, projections):
    """DFA-family rules: each block learns from its own projection."""
    e = error(net.forward(x), y)
    grads = {"out": (net.h_last.T @ e, e.sum(0)), "feedback": []}
    for index, b in enumerate(projections):
        dh, db_proj = local_signal(rule, b, net.cache[index]["h"], e, y)
        dw, db, _ = net.block_grads(index, dh)
        grads[index] = (dw, db)
        grads["feedback"].append(db_proj)
    return grads


# --- Every op of the arch grammar (strides, padding, pools, batch norm,
# residual units), each with its own backward pass --------------------------
#
# An op's `backward(dy, key)` returns the error at its input and fills
# `grads`; `key` says which matrix carries errors back to the input: "W"
# (backprop) or "B" (feedback alignment).


def same_pads(size, kernel, stride):
    """TensorFlow's 'SAME': output ⌈size/stride⌉, the odd pixel after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def pads(size, kernel, stride, padding):
    if padding == "same":
        return same_pads(size, kernel, stride)
    return (0, 0) if padding == "valid" else (padding, padding)


class Conv:
    """x (N,H,W,C) * W (k,k,C,F), stride s, padding 'same'/'valid'/pixels."""

    def __init__(self, W, b=None, B=None, stride=1, padding="same"):
        self.W, self.b, self.B = W, b, B
        self.stride, self.padding = stride, padding

    def forward(self, x):
        k, s = self.W.shape[0], self.stride
        (t, d), (l, r) = (pads(x.shape[1], k, s, self.padding),
                          pads(x.shape[2], k, s, self.padding))
        self.crop = (t, l, x.shape)
        self.xp = np.pad(x, ((0, 0), (t, d), (l, r), (0, 0)))
        ho = (self.xp.shape[1] - k) // s + 1
        wo = (self.xp.shape[2] - k) // s + 1
        self.windows = [(i, j, np.s_[:, i:i + s * (ho - 1) + 1:s,
                                     j:j + s * (wo - 1) + 1:s])
                        for i in range(k) for j in range(k)]
        out = sum(np.einsum("nhwc,cf->nhwf", self.xp[w], self.W[i, j])
                  for i, j, w in self.windows)
        return out + (0 if self.b is None else self.b)

    def backward(self, dy, key="W"):
        kernel = self.W if key == "W" else self.B
        self.grads = {"W": np.zeros_like(self.W)}
        if self.b is not None:
            self.grads["b"] = dy.sum((0, 1, 2))
        dxp = np.zeros_like(self.xp)
        for i, j, w in self.windows:
            self.grads["W"][i, j] = np.einsum("nhwc,nhwf->cf", self.xp[w], dy)
            dxp[w] += np.einsum("nhwf,cf->nhwc", dy, kernel[i, j])
        t, l, shape = self.crop
        return dxp[:, t:t + shape[1], l:l + shape[2]]


class Dense:
    def __init__(self, W, b=None, B=None):
        self.W, self.b, self.B = W, b, B

    def forward(self, x):
        self.shape = x.shape
        self.x = x.reshape(len(x), -1)
        return self.x @ self.W + (0 if self.b is None else self.b)

    def backward(self, dy, key="W"):
        self.grads = {"W": self.x.T @ dy}
        if self.b is not None:
            self.grads["b"] = dy.sum(0)
        return (dy @ (self.W if key == "W" else self.B).T).reshape(
            self.shape)


class BatchNorm:
    """Training mode: the batch's mean and (biased) variance over every
    axis but the channels."""

    def __init__(self, gamma, beta, epsilon):
        self.gamma, self.beta, self.epsilon = gamma, beta, epsilon

    def forward(self, x):
        self.axes = tuple(range(x.ndim - 1))
        mean, var = x.mean(self.axes), x.var(self.axes)
        self.sigma = np.sqrt(var + self.epsilon)
        self.xhat = (x - mean) / self.sigma
        return self.gamma * self.xhat + self.beta

    def backward(self, dy, key="W"):
        self.grads = {"gamma": (dy * self.xhat).sum(self.axes),
                      "beta": dy.sum(self.axes)}
        dxhat = dy * self.gamma
        m = dy.size / dy.shape[-1]
        return (m * dxhat - dxhat.sum(self.axes)
                - self.xhat * (dxhat * self.xhat).sum(self.axes)) / (
                    m * self.sigma)


class Tanh:
    def forward(self, a):
        self.h = np.tanh(a)
        return self.h

    def backward(self, dy, key="W"):
        return dy * (1 - self.h ** 2)


class Pool:
    """Max or average over k×k windows with stride s ('valid'), or the
    global average ('global')."""

    def __init__(self, kind, size=0, stride=0):
        self.kind, self.size, self.stride = kind, size, stride

    def forward(self, x):
        self.shape = x.shape
        if self.kind == "global":
            return x.mean((1, 2))
        k, s = self.size, self.stride
        ho, wo = (x.shape[1] - k) // s + 1, (x.shape[2] - k) // s + 1
        self.cells = [(i, j, np.s_[:, i * s:i * s + k, j * s:j * s + k])
                      for i in range(ho) for j in range(wo)]
        self.x = x
        out = np.zeros((len(x), ho, wo, x.shape[3]))
        for i, j, w in self.cells:
            reduce = np.max if self.kind == "max" else np.mean
            out[:, i, j] = reduce(x[w], axis=(1, 2))
        return out

    def backward(self, dy, key="W"):
        n, h, w, c = self.shape
        if self.kind == "global":
            return np.broadcast_to(dy[:, None, None, :] / (h * w),
                                   self.shape).copy()
        dx = np.zeros(self.shape)
        for i, j, cell in self.cells:
            window = self.x[cell]
            if self.kind == "max":  # to the maximum of each window
                share = window == window.max(axis=(1, 2), keepdims=True)
            else:
                share = np.full(window.shape, 1 / self.size ** 2)
            dx[cell] += share * dy[:, i:i + 1, j:j + 1]
        return dx


class Residual:
    """act(main(x) + shortcut(x)); `shortcut` is [] for the identity."""

    def __init__(self, main, shortcut):
        self.main, self.shortcut, self.act = main, shortcut, Tanh()

    def forward(self, x):
        return self.act.forward(run(self.main, x) + run(self.shortcut, x))

    def backward(self, dy, key="W"):
        da = self.act.backward(dy)
        return back(self.main, da, key) + back(self.shortcut, da, key)


def run(ops, x):
    for op in ops:
        x = op.forward(x)
    return x


def back(ops, dy, key="W"):
    for op in reversed(ops):
        dy = op.backward(dy, key)
    return dy


class OpNet:
    """blocks: lists of ops, each block's output is h_l; output: a Dense."""

    def __init__(self, blocks, output):
        self.blocks, self.output = blocks, output

    def forward(self, x):
        self.hidden = []
        for ops in self.blocks:
            x = run(ops, x)
            self.hidden.append(x)
        return self.output.forward(x)


def opnet_chained(net, x, y, key):
    """BP (key "W") or FA/KP ("B"): errors through every op; the first
    block's input error is computed and ignored."""
    e = error(net.forward(x), y)
    back([op for ops in net.blocks for op in ops] + [net.output], e, key)


def opnet_direct(net, x, y, rule, projections, signals=None):
    """Direct rules: each block from its own signal δ_l (the rule's, or
    `signals` given), through its own ops (with W: inside a block
    autodiff is exact); returns ∂ℓ_l/∂B_l."""
    e = error(net.forward(x), y)
    net.output.backward(e)
    feedback = []
    for index, (ops, h) in enumerate(zip(net.blocks, net.hidden)):
        if signals is None:
            dh, db = local_signal(rule, projections[index], h, e, y)
            feedback.append(db)
        else:
            dh = signals[index]
        back(ops, dh.reshape(h.shape))
    return feedback
