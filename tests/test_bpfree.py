"""`import bpfree` is the one import a plain Python session needs to load a
saved model.keras (README, "Loading a model"): in a new process started in
another folder, the model loads and predicts exactly as the one that was
saved; without the import, Keras cannot find its classes."""

import os
import subprocess
import sys

import numpy as np

import hparams
import train
from conftest import ROOT

LOAD = """
import sys
import numpy as np
{import_line}
import keras
model = keras.models.load_model(sys.argv[1])
np.save(sys.argv[3], model.predict(np.load(sys.argv[2]), verbose=0))
print(type(model).__name__, model.get_config()["algorithm"])
"""


def load_elsewhere(tmp_path, workdir, x, import_line):
    np.save(tmp_path / "x.npy", x)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [sys.executable, "-c", LOAD.format(import_line=import_line),
         os.path.join(workdir, "model.keras"), str(tmp_path / "x.npy"),
         str(tmp_path / "y.npy")],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)


def test_saved_model_loads_after_import_bpfree_from_another_folder(
        tmp_path):
    hp = hparams.make(dataset="digits", algorithm="dkp", arch="8C3-P2-16",
                      epochs=1, use_xla=False, objective="loss")
    workdir = str(tmp_path / "run")
    train.train_and_evaluate(hp, workdir, verbose=0)
    import keras
    x = np.random.default_rng(0).uniform(0, 16, (32, 8, 8, 1)).astype(
        np.float32)
    saved = keras.models.load_model(os.path.join(workdir, "model.keras"))
    expected = saved.predict(x, verbose=0)

    plain = load_elsewhere(tmp_path, workdir, x, "")
    assert plain.returncode != 0
    assert "Could not locate class 'ProjectionModel'" in plain.stderr

    loaded = load_elsewhere(
        tmp_path, workdir, x, f"sys.path.insert(0, {ROOT!r})\nimport bpfree")
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    assert loaded.stdout.split() == ["ProjectionModel", "dkp"]
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), expected)
    import bpfree
    np.testing.assert_array_equal(
        bpfree.load_model(os.path.join(workdir, "model.keras")).predict(
            x, verbose=0), expected)
