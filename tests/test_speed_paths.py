"""The fast paths of the train step compute what the slow ones did, and the
compiled step does only the work its rule needs (benchmarks/speed.py times
it)."""

import math
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

import blocks
import hparams
import projection
import train

INPUT, WIDTHS, CLASSES, BATCH = (8, 8, 1), (48, 40), 3, 16


@pytest.mark.parametrize("shape,size", [((2, 8, 6, 3), 2), ((2, 7, 9, 2), 3)])
def test_reshaped_max_pool_matches_keras_pool_and_its_gradient(shape, size):
    h = tf.constant(np.random.default_rng(0).normal(size=shape), tf.float32)
    upstream = None
    results = []
    for pool in (keras.layers.MaxPooling2D(size),
                 lambda t: blocks.reshaped_max_pool(t, size)):
        with tf.GradientTape() as tape:
            tape.watch(h)
            out = pool(h)
        if upstream is None:
            upstream = tf.random.stateless_normal(tf.shape(out), seed=[1, 2])
        results.append((out, tape.gradient(out, h,
                                           output_gradients=upstream)))
    (keras_out, keras_grad), (ours_out, ours_grad) = results
    np.testing.assert_allclose(ours_out, keras_out)
    np.testing.assert_allclose(ours_grad, keras_grad)


def test_standard_normal_has_unit_moments_and_follows_its_seed():
    draw = tf.function(projection.standard_normal, jit_compile=True)
    samples = draw(tf.constant([501, 401]),
                   keras.random.SeedGenerator(3)).numpy()
    assert samples.shape == (501, 401)
    assert abs(samples.mean()) < 0.01 and abs(samples.std() - 1) < 0.01
    assert abs(np.mean(samples ** 4) - 3) < 0.1  # Gaussian kurtosis
    again = draw(tf.constant([501, 401]), keras.random.SeedGenerator(3))
    np.testing.assert_array_equal(samples, again)


def dot_multiply_adds(hlo: str) -> int:
    """Sum over the dot instructions of an HLO module of output size ×
    contraction size."""
    shapes = {name: [int(d) for d in dims.split(",") if d]
              for name, dims in re.findall(r"(%[\w.\-]+) = f32\[([\d,]*)\]",
                                           hlo)}
    total = 0
    for out, lhs, contracting in re.findall(
            r"= f32\[([\d,]*)\]\S* dot\((%[\w.\-]+), %[\w.\-]+\), "
            r"lhs_contracting_dims=\{(\d+)\}", hlo):
        out_size = math.prod(int(d) for d in out.split(",") if d)
        total += out_size * shapes[lhs][int(contracting)]
    return total


def compiled_step_multiply_adds(rule):
    hp = hparams.make(arch="-".join(map(str, WIDTHS)), algorithm=rule,
                      batch_size=BATCH)
    model = train.build_model(hp, INPUT, CLASSES)
    x = tf.random.normal((BATCH, *INPUT))
    y = tf.one_hot(tf.range(BATCH) % CLASSES, CLASSES)
    step = tf.function(lambda x, y: model.train_step((x, y)),
                       jit_compile=True)
    return dot_multiply_adds(
        step.experimental_get_compiler_ir(x, y)(stage="optimized_hlo"))


def test_compiled_steps_do_only_the_multiply_adds_their_rule_needs():
    sizes = [math.prod(INPUT), *WIDTHS, CLASSES]
    forward = sum(a * b for a, b in zip(sizes, sizes[1:]))
    first_layer = sizes[0] * sizes[1]
    signals = sum(WIDTHS) * CLASSES  # e Bᵀ, one per hidden block
    # BP: forward, weight gradients, input gradients except the first
    # layer's (the input needs none).
    assert compiled_step_multiply_adds("bp") == BATCH * (
        3 * forward - first_layer)
    # DFA: no input gradient at all, only the projected error.
    assert compiled_step_multiply_adds("dfa") == BATCH * (
        2 * forward + signals)
    # FDFA: as DFA, plus one tangent pass (no matmul for the input, which
    # carries no tangent) and the estimates uᵀ d: no zero-tangent matmuls.
    estimates = sum(WIDTHS) * CLASSES
    assert compiled_step_multiply_adds("fdfa") == BATCH * (
        3 * forward - first_layer + signals + estimates)
