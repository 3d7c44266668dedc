"""Each rule's update worked out by hand in numpy (float64), independent of
TensorFlow: forward pass, teaching signals, weight gradients.

Networks are tanh blocks (dense or 'same' stride-1 conv, optional 2×2 max
pool) and a dense output layer; softmax + cross-entropy (batch mean).
"""

from __future__ import annotations

import numpy as np


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
