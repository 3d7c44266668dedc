"""Recipes: initialisations, optimizers with torch.optim's update rules,
per-epoch learning-rate schedules, a whole run killed mid-epoch, the README's
DKP recipe; each against numbers worked out by hand (the inputs'
normalisation and augmentation: tests/test_inputs.py)."""

import json
import math
import os
import shlex
import subprocess
import sys

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

import datasets
import hparams
import layers
import optimizers
import train
from conftest import ROOT
from test_rules import batch, make_model

# --- Initialisation -----------------------------------------------------------

FAN_IN, UNITS = 400, 300


def built(kind, init, fan_in=FAN_IN, units=UNITS, kernel=3):
    """A dense layer reading fan_in units, or a conv layer whose fan-in is
    kernel² · fan_in/9 channels (the same fan-in)."""
    keras.utils.set_random_seed(0)
    layer = layers.make_linear(kind, units, kernel, init=init)
    layer.build((None, fan_in) if kind == "dense"
                else (None, 8, 8, fan_in // kernel ** 2))
    return layer.kernel.numpy(), layer.bias.numpy()


@pytest.mark.parametrize("kind", ["dense", "conv"])
@pytest.mark.parametrize("init, limit", [
    ("glorot_uniform", lambda fi, fo: math.sqrt(6 / (fi + fo))),
    ("torch", lambda fi, fo: 1 / math.sqrt(fi)),
    ("he_uniform", lambda fi, fo: math.sqrt(6 / fi)),
])
def test_uniform_inits_fill_their_bounds(kind, init, limit):
    w, b = built(kind, init, fan_in=396 if kind == "conv" else FAN_IN)
    fan_in = int(np.prod(w.shape[:-1]))
    fan_out = UNITS * (9 if kind == "conv" else 1)
    bound = limit(fan_in, fan_out)
    assert np.abs(w).max() <= bound
    assert np.abs(w).max() > 0.99 * bound  # uniform: fills the interval
    assert abs(w.std() - bound / math.sqrt(3)) < 0.02 * bound


@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_torch_biases_are_uniform_over_one_over_root_fan_in(kind):
    w, b = built(kind, "torch", fan_in=396 if kind == "conv" else FAN_IN)
    bound = 1 / math.sqrt(np.prod(w.shape[:-1]))
    assert np.abs(b).max() <= bound and np.abs(b).max() > 0.95 * bound
    _, keras_bias = built(kind, "glorot_uniform")
    assert not keras_bias.any()  # Keras' inits start biases at zero


@pytest.mark.parametrize("init, std", [
    ("he_normal", math.sqrt(2 / FAN_IN)),
    ("lecun_normal", math.sqrt(1 / FAN_IN)),
])
def test_normal_inits_have_their_standard_deviation(init, std):
    w, b = built("dense", init)
    assert abs(w.std() - std) < 0.02 * std
    assert np.abs(w).max() <= 2 * std / 0.87962566  # truncated at 2σ'


def test_orthogonal_init_has_orthonormal_columns():
    w, _ = built("dense", "orthogonal")
    np.testing.assert_allclose(w.T @ w, np.eye(UNITS), atol=1e-5)


def test_init_is_seeded_and_reaches_every_layer():
    hp = hparams.make(arch="8C3-16", init="torch", algorithm="fa")
    a, b = (train.build_model(hp, (6, 6, 1), 3) for _ in range(2))
    for la, lb in zip([*(x.layer for x in a.blocks), a.output_layer],
                      [*(x.layer for x in b.blocks), b.output_layer]):
        np.testing.assert_array_equal(la.kernel.numpy(), lb.kernel.numpy())
        bound = 1 / math.sqrt(np.prod(la.kernel.shape[:-1]))
        assert np.abs(la.bias.numpy()).max() <= bound
        assert np.abs(la.bias.numpy()).max() > 0  # torch biases, not zeros


def test_batch_norm_takes_its_momentum_and_epsilon():
    hp = hparams.make(arch="4", batch_norm=True, bn_momentum=0.9,
                      bn_epsilon=1e-5)
    model = train.build_model(hp, (3,), 2)
    norm = model.blocks[0].norm
    assert (norm.momentum, norm.epsilon) == (0.9, 1e-5)
    x = np.random.default_rng(0).normal(2.0, 3.0, (64, 3)).astype("f4")
    a = model.blocks[0].layer(x).numpy()
    norm(a, training=True)  # moving = 0.9 · moving + 0.1 · batch statistics
    np.testing.assert_allclose(norm.moving_mean.numpy(), 0.1 * a.mean(0),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(norm.moving_variance.numpy(),
                               0.9 + 0.1 * a.var(0), rtol=1e-5)


# --- Optimizers: torch.optim's rules, two steps by hand --------------------------

W0 = np.array([1.0, -2.0, 0.5])
GRADS = [np.array([0.5, 0.25, -1.0]), np.array([-0.2, 0.4, 0.3])]
LR, DECAY, MU, EPS = 0.1, 0.05, 0.9, 1e-8


def steps(name, weight_decay):
    optimizer = optimizers.make(name, LR, weight_decay, MU, EPS)
    w = tf.Variable(W0, dtype=tf.float64)
    for g in GRADS:
        optimizer.apply([tf.constant(g)], [w])
    return w.numpy()


def by_hand(name, decay):
    """torch.optim.SGD / Adam / AdamW, written out."""
    w, buf, m, v = W0.copy(), np.zeros(3), np.zeros(3), np.zeros(3)
    for t, g in enumerate(GRADS, start=1):
        if name == "adamw":
            w = w * (1 - LR * decay)
        else:
            g = g + decay * w
        if name == "sgd":
            w = w - LR * g
        elif name in ("momentum", "nesterov"):
            buf = MU * buf + g
            w = w - LR * (g + MU * buf if name == "nesterov" else buf)
        else:
            m = 0.9 * m + 0.1 * g
            v = 0.999 * v + 0.001 * g * g
            denominator = np.sqrt(v) / np.sqrt(1 - 0.999 ** t) + EPS
            w = w - LR / (1 - 0.9 ** t) * m / denominator
    return w


@pytest.mark.parametrize("decay", [0.0, DECAY])
@pytest.mark.parametrize("name", list(optimizers.OPTIMIZERS))
def test_two_steps_match_torch_optim_by_hand(name, decay):
    np.testing.assert_allclose(steps(name, decay), by_hand(name, decay),
                               rtol=1e-7)  # η is held in float32


def test_momentum_two_steps_in_numbers():
    """b₁ = g₁, w₁ = w₀ − η g₁; b₂ = μ g₁ + g₂, w₂ = w₁ − η b₂."""
    expected = W0 - LR * GRADS[0] - LR * (MU * GRADS[0] + GRADS[1])
    np.testing.assert_allclose(steps("momentum", 0.0), expected, rtol=1e-7)
    assert not np.allclose(steps("nesterov", 0.0), expected)


def test_momentum_keeps_gradient_units_under_a_changing_rate():
    """PyTorch's buffer is in gradient units: halving η halves the step at
    once (Keras' SGD keeps a velocity in step units, which would not)."""
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay(
        [0], [LR, LR / 2])  # step 0: η, step 1: η/2
    optimizer = optimizers.make("momentum", schedule, 0.0, MU)
    w = tf.Variable(W0, dtype=tf.float64)
    for g in GRADS:
        optimizer.apply([tf.constant(g)], [w])
    expected = W0 - LR * GRADS[0] - LR / 2 * (MU * GRADS[0] + GRADS[1])
    np.testing.assert_allclose(w.numpy(), expected, rtol=1e-7)


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_kp_w_minus_b_shrinks_by_one_minus_lr_lambda(name):
    """KP: B gets W's gradient and decay; under sgd (L2) and adamw
    (decoupled) W − B shrinks by exactly (1 − ηλ) per step."""
    lr, decay = 0.1, 0.05
    model = make_model("kp")
    model.compile(optimizers.make(name, lr, decay), jit_compile=False)
    x, y = batch((2, 3, 1))
    linear = [b.layer for b in model.blocks] + [model.output_layer]

    def gaps():
        return [np.linalg.norm(l.kernel.numpy() - l.backward_kernel.numpy())
                for l in linear]
    before = gaps()
    for step in range(1, 5):
        model.train_on_batch(x, y)
        np.testing.assert_allclose(gaps(), np.array(before) *
                                   (1 - lr * decay) ** step, rtol=2e-4)


def test_unknown_optimizer_is_refused_with_the_choices():
    with pytest.raises(hparams.UsageError, match="valid: sgd, momentum"):
        optimizers.make("rmsprop", 0.1)


# --- Learning-rate schedules ------------------------------------------------------


@pytest.mark.parametrize("settings, expected", [
    (dict(kind="constant", epochs=3), [1.0, 1.0, 1.0]),
    (dict(kind="step", epochs=6, decay=0.5, decay_epochs=2),
     [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]),
    (dict(kind="step", epochs=3, decay=0.95, decay_epochs=1),
     [1.0, 0.95, 0.9025]),
    (dict(kind="cosine", epochs=4),  # (1 + cos(πk/4))/2
     [1.0, 0.8535533905932737, 0.5, 0.14644660940672627]),
    (dict(kind="constant", epochs=4, warmup_epochs=2),
     [1 / 3, 2 / 3, 1.0, 1.0]),
    (dict(kind="step", epochs=5, warmup_epochs=1, decay=0.1, decay_epochs=2),
     [0.5, 1.0, 1.0, 0.1, 0.1]),
    (dict(kind="cosine", epochs=4, warmup_epochs=1),  # then over 3 epochs
     [0.5, 1.0, 0.75, 0.25]),
])
def test_learning_rate_of_every_epoch(settings, expected):
    schedule = optimizers.EpochSchedule(0.2, steps_per_epoch=7, **settings)
    got = [schedule.epoch_lr(e) for e in range(len(expected))]
    np.testing.assert_allclose(got, 0.2 * np.array(expected), rtol=1e-6)
    # Constant within an epoch: the last step of epoch 1 has epoch 1's rate.
    assert float(schedule(13)) == pytest.approx(got[1], rel=1e-6)


def test_the_optimizer_trains_at_the_schedule_rate():
    hp = hparams.make(arch="4", optimizer="momentum", lr=0.2,
                      lr_schedule="step", lr_decay=0.5, lr_decay_epochs=1,
                      epochs=3)
    model = train.build_model(hp, (3,), 2, steps_per_epoch=5)
    for step, rate in [(0, 0.2), (4, 0.2), (5, 0.1), (14, 0.05)]:
        model.optimizer.iterations.assign(step)
        assert float(model.optimizer.learning_rate) == pytest.approx(rate)
    # The feedback optimizer keeps its own per-epoch decay.
    hp = hp.replace(algorithm="dkp", fb_lr=1e-3, fb_lr_decay=0.8)
    model = train.build_model(hp, (3,), 2, steps_per_epoch=5)
    model.feedback_optimizer.iterations.assign(10)
    assert float(model.feedback_optimizer.learning_rate) == pytest.approx(
        1e-3 * 0.8 ** 2)


# --- A whole run: logged rates, and a kill mid-epoch ------------------------------

RUN = ["--dataset=digits", "--arch=4C3-P2-16", "--epochs=3",
       "--augment=crop_flip", "--lr_schedule=cosine", "--batch_size=32",
       "--optimizer=momentum", "--lr=0.05", "--use_xla=false",
       "--dropout=0.1", "--steps_per_execution=1"]


def run_train(workdir, kill_at=None):
    env = {k: v for k, v in os.environ.items() if k != "BPFREE_KILL_AT"}
    if kill_at:
        env["BPFREE_KILL_AT"] = kill_at
    return subprocess.run([sys.executable, "train.py", *RUN,
                           f"--workdir={workdir}"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_killed_mid_epoch_ends_bit_identical_with_the_same_rates(tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert run_train(whole).returncode == 0
    # Epoch 2 of 3 (41 batches each): killed after its 24th batch.
    first = run_train(killed, kill_at="train_batch:65")
    assert first.returncode == -9, first.stderr[-2000:]
    assert not (killed / "metrics.json").exists()
    assert run_train(killed).returncode == 0
    starts = [json.loads(line)["start_epoch"] for line in
              (killed / "attempts.jsonl").read_text().splitlines()]
    assert starts == [0, 1]
    a = json.loads((whole / "metrics.json").read_text())
    b = json.loads((killed / "metrics.json").read_text())
    for key, value in a.items():
        if key not in ("train_seconds", "compile_seconds"):
            assert b[key] == value, key
    history = pd.read_csv(killed / "history.csv")
    cosine = [0.05 * (1 + math.cos(math.pi * k / 3)) / 2 for k in range(3)]
    np.testing.assert_allclose(history["lr"], cosine, rtol=1e-6)
    pd.testing.assert_frame_equal(history, pd.read_csv(whole /
                                                       "history.csv"))


# --- The README's DKP CIFAR-10 recipe ----------------------------------------------


def readme_command(marker):
    """The bash command in the README's code block after `marker`."""
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    block = text[text.index(marker):].split("```bash\n", 1)[1]
    block = block.split("```", 1)[0]
    return shlex.split(block.replace("\\\n", " "))


@pytest.mark.slow
def test_readme_dkp_cifar10_command_trains_on_cifar_files(tmp_path):
    """Acceptance: the README's command, on CIFAR-format files, for one
    epoch (its data folder, epochs and workdir replaced)."""
    from test_data import write_cifar
    sub, _, train_files, test_files, key, classes = datasets.CIFAR["cifar10"]
    write_cifar(str(tmp_path / "cifar" / sub), "cifar10", 20, classes, key,
                train_files + test_files)
    command = readme_command("dkp-cifar10-command")
    assert command[:2] == [".venv/bin/python", "train.py"]
    replaced = {"--data_dir": str(tmp_path / "cifar"), "--epochs": "1",
                "--workdir": str(tmp_path / "run")}
    flags = [f"{f.split('=')[0]}={replaced[f.split('=')[0]]}"
             if f.split("=")[0] in replaced else f for f in command[2:]]
    assert sum(f.split("=")[0] in replaced for f in flags) == 3
    result = subprocess.run([sys.executable, "train.py", *flags], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    hp = metrics["hparams"]
    assert (hp["arch"], hp["optimizer"], hp["batch_size"]) == (
        "dkp_cifar10", "nesterov", 50)
    assert metrics["epochs_run"] == 1 and math.isfinite(metrics["loss"])
    history = pd.read_csv(tmp_path / "run" / "history.csv")
    assert history["fb_lr"].tolist() == pytest.approx([1e-4])
