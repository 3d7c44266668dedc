"""The forward-only rules' updates by hand in numpy (float64): forward
gradients (fg_w, fg_a) given the directions the step drew, and PEPITA
given F.  Built on reference.py's network (tanh blocks, dense or conv,
optional 2×2 max pool, dense output layer, softmax cross-entropy)."""

from __future__ import annotations

import numpy as np

import reference


def output_signals(net, x, y):
    """(e = ∂L/∂z, [∂L/∂h_l at each block's output]) by backprop: what
    the forward-mode products estimate."""
    e = reference.error(net.forward(x), y)
    dh = e @ net.output["W"].T
    signals = [None] * len(net.layers)
    for index in reversed(range(len(net.layers))):
        signals[index] = dh.reshape(net.cache[index]["h"].shape)
        _, _, da = net.block_grads(index, dh)
        if index > 0:
            dh = net.send_back(index, da, net.layers[index]["W"])
    return e, signals


def fg_w_grads(net, x, y, directions):
    """g = (∇L · v) v, v one direction over [W_1, b_1, ..., W_o, b_o]."""
    true = reference.chained_grads(net, x, y, use_backward_kernel=False)
    keys = [*range(len(net.layers)), "out"]
    flat = [g for key in keys for g in true[key]]
    along = sum(float((g * v).sum()) for g, v in zip(flat, directions))
    scaled = [along * v for v in directions]
    return {key: (scaled[2 * i], scaled[2 * i + 1])
            for i, key in enumerate(keys)}


def fg_a_grads(net, x, y, directions):
    """δ_l = (∂L/∂h_l · u_l) u_l per example; each block trained by its
    δ_l as a direct rule's; the output layer by L's true gradient."""
    e, signals = output_signals(net, x, y)
    grads = {"out": (net.h_last.T @ e, e.sum(0))}
    for index, (dh, u) in enumerate(zip(signals, directions)):
        along = (dh * u).reshape(len(dh), -1).sum(1)
        delta = along.reshape((-1,) + (1,) * (u.ndim - 1)) * u
        dw, db, _ = net.block_grads(index, delta)
        grads[index] = (dw, db)
    return grads


def pepita_grads(net, x, y, modulator):
    """PEPITA: a second pass on x' = x + e Fᵀ (e = softmax(z) − y); block
    l: (h_l − h'_l)ᵀ in'_l / N before its pool, the output layer the
    modulated pass's true gradient."""
    n = len(x)
    e = reference.softmax(net.forward(x)) - y
    clean = [np.tanh(c["a"]) for c in net.cache]
    z2 = net.forward(x + (e @ modulator.T).reshape(x.shape))
    e2 = reference.error(z2, y)
    grads = {"out": (net.h_last.T @ e2, e2.sum(0))}
    for index, (layer, c) in enumerate(zip(net.layers, net.cache)):
        d = (clean[index] - np.tanh(c["a"])) / n
        if layer["kind"] == "dense":
            grads[index] = (c["x"].T @ d, d.sum(0))
        else:
            grads[index] = (reference.conv_grad_kernel(c["x"], d,
                                                       layer["W"].shape),
                            d.sum((0, 1, 2)))
    return grads


# --- Through every op (reference.OpNet) -------------------------------------


def opnet_pepita(net, x, y, modulator):
    """PEPITA through OpNet blocks of [pool], linear, tanh, [pool]: each
    linear op's gradient from (h − h')/N at its tanh, read after the
    modulated pass (so the op holds that pass's input)."""
    def tanhs():
        return [next(op for op in ops if isinstance(op, reference.Tanh))
                for ops in net.blocks]
    e = reference.softmax(net.forward(x)) - y
    clean = [op.h for op in tanhs()]
    z2 = net.forward(x + (e @ modulator.T).reshape(x.shape))
    net.output.backward(reference.error(z2, y))
    for ops, h, op in zip(net.blocks, clean, tanhs()):
        linear = next(o for o in ops if isinstance(
            o, (reference.Dense, reference.Conv)))
        linear.backward((h - op.h) / len(x))


def pepita_dropout_grads(net, x, y, modulator, masks):
    """PEPITA on a dense net with dropout: each hidden activation times its
    mask (0 or 1/keep, one mask for both passes), compared after it."""
    def forward(inputs):
        seen, outs = [], []
        for layer, mask in zip(net.layers, masks):
            seen.append(inputs)
            inputs = np.tanh(inputs @ layer["W"] + layer["b"]) * mask
            outs.append(inputs)
        return inputs @ net.output["W"] + net.output["b"], seen, outs
    x = x.reshape(len(x), -1)
    z, _, clean = forward(x)
    e = reference.softmax(z) - y
    z2, seen, modulated = forward(x + e @ modulator.T)
    e2 = reference.error(z2, y)
    grads = {"out": (modulated[-1].T @ e2, e2.sum(0))}
    for index, (inputs, h, h2) in enumerate(zip(seen, clean, modulated)):
        d = (h - h2) / len(x)
        grads[index] = (inputs.T @ d, d.sum(0))
    return grads
