"""The one import that makes bpfree's saved models loadable anywhere.

    import sys
    sys.path.insert(0, "/path/to/bpfree")   # this repository
    import bpfree
    model = bpfree.load_model("runs/dfa/model.keras")

Importing `bpfree` registers with Keras every class a `model.keras` names
(`ProjectionModel`, its blocks and feedback layers, every rule's
projection), so `keras.models.load_model` works too, in any folder.
The loaded model predicts exactly as the saved one did, and holds its
feedback matrices and both optimizers' state.
"""

from __future__ import annotations

import keras

import layers  # noqa: F401  (registers the blocks and feedback layers)
import model  # noqa: F401  (registers ProjectionModel)
import optimizers  # noqa: F401  (registers the optimizers and schedules)
import projection  # noqa: F401  (registers every rule)
from model import ProjectionModel  # noqa: F401
from projection import RULES  # noqa: F401


def load_model(path: str, **kwargs):
    """`keras.models.load_model` of a model.keras written by bpfree."""
    return keras.models.load_model(path, **kwargs)
