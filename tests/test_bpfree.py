"""`import bpfree` is the one import a plain Python session needs to load a
saved model.keras (README, "Loading a model"): in a new process started in
another folder, the model loads and predicts exactly as the one that was
saved; without the import, Keras cannot find its classes."""

import os
import subprocess
import sys

import numpy as np
import pytest

import hparams
import train
from conftest import ROOT

# Starts processes, kills them or fills disks (-m "not slow" leaves it out).
pytestmark = pytest.mark.slow

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


EVALUATE = """
import json, sys
sys.path.insert(0, {root!r})
import bpfree
import keras
import numpy as np
workdir, data_dir = sys.argv[1], sys.argv[2]
model, hparams = bpfree.load_run(workdir)
with np.load(data_dir + "/mnist.npz") as f:
    x, labels = f["x_test"], f["y_test"]     # raw pixels, class ids
x = bpfree.inputs(x, hparams, data_dir=data_dir)
results = {{
    "ids": model.evaluate(x, labels, verbose=0, return_dict=True),
    "ids (N, 1)": model.evaluate(x, labels[:, None], verbose=0,
                                 return_dict=True),
    "one-hot": model.evaluate(x, keras.utils.to_categorical(labels, 10),
                              verbose=0, return_dict=True)}}
print(json.dumps({{k: v["accuracy"] for k, v in results.items()}}))
"""


def test_a_loaded_model_evaluates_with_the_files_labels_or_one_hot(
        tmp_path):
    """README, "Loading a model": in a fresh process, raw MNIST test images
    scaled as in training, evaluated with the class ids mnist.npz holds and
    with one-hot labels, give the run's recorded test accuracy."""
    from conftest import SHARED_DATA
    if not os.path.exists(os.path.join(SHARED_DATA, "mnist.npz")):
        import pytest
        pytest.skip("no shared MNIST")
    hp = hparams.make(dataset="mnist", data_dir=SHARED_DATA, arch="32",
                      examples_frac=0.05, epochs=1, objective="loss",
                      scaler="standard")
    workdir = str(tmp_path / "run")
    metrics = train.train_and_evaluate(hp, workdir, verbose=0)
    result = subprocess.run(
        [sys.executable, "-c", EVALUATE.format(root=ROOT), workdir,
         os.path.abspath(SHARED_DATA)], cwd=tmp_path, capture_output=True,
        text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    import json
    accuracy = json.loads(result.stdout.splitlines()[-1])
    assert accuracy == {"ids": metrics["test_accuracy"],
                        "ids (N, 1)": metrics["test_accuracy"],
                        "one-hot": metrics["test_accuracy"]}
