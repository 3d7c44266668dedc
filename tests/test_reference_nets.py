"""The reference networks end to end on CIFAR-format files written here:
every rule trains resnet20 and reloads to the same predictions, a residual
run killed mid-way resumes exactly, and a CIFAR sweep without --arch
trains the CIFAR default CNN.

XLA: compiling resnet20's step takes 20-50 s per rule on 2 CPU cores, so
by default fa (feedback kernels through strided, padded and 1×1
convolutions) and fdfa (per-block signals and the forward-mode probe)
train under XLA and the seven others in graph mode; they share those
compiled paths (bp: fa's with W; kp: fa's plus B's update; dkp, drtp,
cce, mse: fdfa's minus the probe, another local loss).  With
BPFREE_SLOW_TESTS=1 all nine train under XLA (about 5 minutes).
"""

import json
import os
import subprocess

import keras
import numpy as np
import pytest

import dataloader
import datasets
import hparams
import train
from conftest import ROOT
from hparams import ALGORITHMS
from test_data import write_cifar

# Trains real networks end to end, for long (-m "not slow" leaves it out).
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cifar10(tmp_path_factory):
    """4 images per file: 20 training, 4 test images (every batch of 4
    has one shape, so each compiled function is compiled once)."""
    folder = tmp_path_factory.mktemp("cifar")
    sub, _, train_files, test_files, key, classes = datasets.CIFAR["cifar10"]
    write_cifar(str(folder / sub), "cifar10", 4, classes, key,
                train_files + test_files)
    return str(folder)


XLA_RULES = ALGORITHMS
# One rule of each kind of step, not all sixteen (each compiles resnet20:
# about 17 s): backprop; B in the layers, fixed (fa) or drawn every step
# (brsf: its generator saved and reloaded); a projection per block, fixed
# (dfa), learned (dkp) or estimated forward (fdfa: the probe's
# generator); the whole step its own (fg_w); the control (shallow).  The
# others differ from these only in maths the one-step tests check (kp,
# usf, frsf, drtp, cce, mse); fg_a and pepita refuse resnet20's batch
# norm and residual units (test_cli).
RESNET20_RULES = ("bp", "fa", "brsf", "dfa", "dkp", "fdfa", "fg_w",
                  "shallow")


@pytest.mark.parametrize("rule", RESNET20_RULES)
def test_each_kind_of_rule_trains_resnet20_and_reloads_it(rule, cifar10,
                                                          tmp_path):
    """One epoch through the trainer's own pipeline and build (what
    train_and_evaluate runs, less its evaluation), saved as it saves."""
    datasets._cached_arrays.cache_clear()
    xla = rule in XLA_RULES
    hp = hparams.make(dataset="cifar10", data_dir=cifar10, arch="resnet20",
                      algorithm=rule, epochs=1, batch_size=4,
                      objective="loss", use_xla=xla, weight_decay=1e-4,
                      # what compiles fastest: one step per call, SGD
                      steps_per_execution=1, optimizer="sgd",
                      fb_optimizer="sgd")
    data = dataloader.load(hp)
    model = train.build_model(hp, data.input_shape, data.target_dim,
                              data.steps_per_epoch)
    before = [v.numpy() for v in model.trainable_variables]
    history = model.fit(data.train, epochs=1, verbose=0, shuffle=False)
    assert model.jit_compile is xla and len(model.blocks) == 10
    assert np.isfinite(history.history["loss"][0])
    output = {id(v) for v in model.output_layer.trainable_variables}
    for b, v in zip(before, model.trainable_variables):
        # every one trained; shallow: the output layer's alone
        learns = rule != "shallow" or id(v) in output
        assert np.array_equal(b, v.numpy()) is not learns, v.path
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert len(loaded.weights) == len(model.weights)
    for a, b in zip(model.weights, loaded.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    x = next(iter(data.test))[0]
    np.testing.assert_array_equal(model(x, training=False),
                                  loaded(x, training=False))


def test_a_cifar_sweep_without_arch_trains_the_dkp_cnn(cifar10, tmp_path):
    sweep = tmp_path / "exp"
    result = subprocess.run(
        ["./train.bash", str(sweep), "--dataset=cifar10", "--algorithm=dfa",
         f"--data_dir={cifar10}", "--epochs=1", "--examples_frac=0.5",
         "--lr=1e-3", "--use_xla=false"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    with open(sweep / "sweep.json") as f:
        plan = json.load(f)
    assert plan["space"]["arch"] == ["dkp_cifar10"]
    assert plan["space"]["batch_norm"] == [False]  # pinned by the preset
    assert [c["arch"] for c in plan["grid"]] == ["dkp_cifar10"]
    (run,) = (sweep / "trials").glob("*/exec0")
    with open(run / "metrics.json") as f:
        assert json.load(f)["hparams"]["arch"] == "dkp_cifar10"
    model = keras.models.load_model(run / "model.keras")
    assert model.blocks[2].layer.kernel.shape == (6272, 128)


def test_a_residual_run_killed_after_an_epoch_resumes_exactly(tmp_path):
    """fdfa (random directions, learned B), a pool opening a residual
    unit, batch norm and per-block dropout: SIGKILLed after epoch 1 of 2,
    rerun, it ends with the weights of a run never stopped."""
    flags = {"dataset": "digits", "algorithm": "fdfa", "epochs": 2,
             "arch": "4C3:bn-P2+R4s2:bn:d0.2-R4-G", "examples_frac": 0.1,
             "use_xla": False, "objective": "loss"}
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    train.train_and_evaluate(hparams.make(**flags), str(whole), verbose=0)

    def run(kill_at=None):
        env = {k: v for k, v in os.environ.items() if k != "BPFREE_KILL_AT"}
        if kill_at:
            env["BPFREE_KILL_AT"] = kill_at
        return subprocess.run(
            [os.path.join(ROOT, ".venv", "bin", "python"), "train.py",
             *[f"--{k}={v}" for k, v in flags.items()],
             f"--workdir={killed}"], cwd=ROOT, env=env,
            capture_output=True, text=True, timeout=300)

    assert run(kill_at="epoch_end:1").returncode == -9
    assert not (killed / "metrics.json").exists()
    assert run().returncode == 0
    a = keras.models.load_model(whole / "model.keras")
    b = keras.models.load_model(killed / "model.keras")
    assert len(a.weights) == len(b.weights) > 30
    for va, vb in zip(a.weights, b.weights):
        np.testing.assert_array_equal(va.numpy(), vb.numpy(),
                                      err_msg=va.path)
