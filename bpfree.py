"""The one import that makes bpfree's saved models loadable anywhere.

    import sys
    sys.path.insert(0, "/path/to/bpfree")   # this repository
    import bpfree
    model, hparams = bpfree.load_run("runs/dfa")   # model.keras, its settings
    x = bpfree.inputs(x_test, hparams)    # raw images, scaled as in training
                                          # (data_dir=: where the files are)
    model.evaluate(x, y_test)             # class ids or one-hot labels

Importing `bpfree` registers with Keras every class a `model.keras` names
(`ProjectionModel`, its blocks and feedback layers, every rule's
projection), so `keras.models.load_model` works too, in any folder.
The loaded model predicts exactly as the saved one did, and holds its
feedback matrices and both optimizers' state.
"""

from __future__ import annotations

import os

# TensorFlow's informational C++ lines, unless the user chose a level.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

import layers  # noqa: E402,F401  (registers the blocks and feedback layers)
import model  # noqa: F401  (registers ProjectionModel)
import optimizers  # noqa: F401  (registers the optimizers and schedules)
import projection  # noqa: F401  (registers every rule)
from model import ProjectionModel  # noqa: F401
from projection import RULES  # noqa: F401


def load_model(path: str, **kwargs):
    """`keras.models.load_model` of a model.keras written by bpfree."""
    return keras.models.load_model(path, **kwargs)


def load_run(workdir: str):
    """(model, hparams) of a finished run (a train.py --workdir, or a
    sweep's trials/<trial>/exec<k>): its model.keras and the settings its
    metrics.json records."""
    import json

    import hparams as hparams_lib
    with open(os.path.join(workdir, "metrics.json")) as f:
        recorded = json.load(f)["hparams"]
    return (load_model(os.path.join(workdir, "model.keras")),
            hparams_lib.HParams(recorded))


def inputs(x, hparams, data_dir=None):
    """Raw examples of the run's dataset as its network reads them (its
    scaling, channel axis and --image_size: dataloader.network_inputs).
    The dataset's files are read for its value range (and, for
    `--scaler=normalize`, its training split's statistics): `data_dir`
    names their folder when the run's own --data_dir does not lead there
    from here (it is kept as it was given, relative or not)."""
    import dataloader
    if data_dir is not None:
        hparams = hparams.replace(data_dir=data_dir)
    return dataloader.network_inputs(x, hparams)
