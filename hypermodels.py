"""The search space as a keras-tuner HyperModel.

`build(hp)` declares one hyperparameter per field of hparams.py, with the
field's name: `hp.Fixed` for a value pinned on the command line (or a
one-value grid), `hp.Choice` over the grid otherwise.  It returns the
resolved `HParams`; the trial then goes through `train.train_and_evaluate`,
the same build path as a single run.  The space is copied per trial, never
mutated.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import keras_tuner

import hparams as hparams_lib


class ProjectionHyperModel(keras_tuner.HyperModel):
    def __init__(self, space: Mapping[str, Sequence]):
        super().__init__(name="projection")
        self.space = {name: tuple(values) for name, values in space.items()}

    def build(self, hp) -> hparams_lib.HParams:
        values = {}
        for name, choices in self.space.items():
            if name in hparams_lib.LOCATION_FIELDS:
                # Where this process finds things: not a value of the trial
                # (a resumed trial keeps the values it was created with).
                values[name] = choices[0]
            elif len(choices) == 1:
                values[name] = hp.Fixed(name, choices[0])
            else:
                values[name] = hp.Choice(name, list(choices), ordered=False)
        return hparams_lib.HParams(values)

    def searched(self) -> list[str]:
        """Names of the fields that vary in this sweep."""
        return [name for name, values in self.space.items()
                if len(values) > 1]
