"""hparams.py, the one table of settings: its choice lists agree with the
registries that implement them (one parity test over every list declared
twice), an edit of a default or grid is checked as a flag is, and the
flags and the tuner's names are the fields'."""

import dataclasses
import os
import subprocess

import pytest

import cli
import hparams
import sweep_plan
import train
import tune
from conftest import ROOT, edit_grid, refused, repo_copy


def registries():
    """{hparams list: the registry that implements it} (those modules load
    TensorFlow, which flag parsing must not)."""
    import augment
    import layers
    import optimizers
    import projection
    import trackers
    return {
        "ALGORITHMS": tuple(projection.RULES),
        "LABEL_ONLY_ALGORITHMS": tuple(k for k, r in projection.RULES.items()
                                       if not r.supports_reconstruction),
        "DIRECT_ALGORITHMS": tuple(k for k, r in projection.RULES.items()
                                   if r.direct),
        "SIGN_ALGORITHMS": tuple(k for k, r in projection.RULES.items()
                                 if r.kernel_feedback in layers.SIGN_FEEDBACK),
        "SIGN_BW_INITS": layers.SIGN_BW_INITS,
        "ACTIVATIONS": tuple(layers.ACTIVATIONS),
        "OPTIMIZERS": tuple(optimizers.OPTIMIZERS),
        "LR_SCHEDULES": tuple(optimizers.LR_SCHEDULES),
        "AUGMENTS": tuple(augment.AUGMENTS),
        "TRACKERS": tuple(trackers.SCALAR_TAGS),
    }


def takers():
    """{hparams list: the code that takes a name of it} for the lists with
    no registry: each name of the list must be taken, a foreign one
    refused."""
    import keras
    import numpy as np

    import dataloader
    import layers
    images = np.ones((2, 2, 2, 1), np.float32)
    return {
        "BW_INITS": lambda n: keras.initializers.get(
            layers.feedback_initializer(n, 0, 4)),
        "INITS": lambda n: keras.initializers.get(
            layers.kernel_initializer(n)),
        "SCALERS": lambda n: dataloader.scale(
            images, n, 255.0, (np.zeros(1), np.ones(1))),
        "SKEW_TYPES": lambda n: dataloader.class_sizes(
            np.array([5, 5]), n, 2.0),
        "PRECISIONS": keras.DTypePolicy,
    }


def test_every_choice_list_declared_twice_matches_its_implementation():
    """Flag parsing cannot import the registries (they load TensorFlow),
    so hparams.py lists their choices; a list and its implementation that
    part ways fail here, each of them (DATASETS is declared once:
    datasets.SPECS)."""
    import datasets
    assert hparams.DATASETS == tuple(datasets.SPECS)
    for name, registry in registries().items():
        assert set(getattr(hparams, name)) == set(registry), name
    for name, take in takers().items():
        for choice in getattr(hparams, name):
            take(choice)  # (raises if the code does not know it)
        with pytest.raises((ValueError, KeyError)):
            take("no_such_choice")
    for field in hparams.FIELDS:  # a default is one of its choices
        if field.choices is not None and not field.multiple:
            assert field.default in field.choices, field.name


# --- hparams.py, edited -------------------------------------------------------


HPARAMS_EDITS = {  # case: (field, the grid written in hparams.py, the line)
    "a string in a float grid": (
        "lr", '(1e-3, 1e-2, "0.1")', "hparams.py: lr's grid holds '0.1': a "
        "str, but lr takes float values (write 0.1)"),
    "a choice outside the field's list": (
        "activation", '("tanh", "gelu")', "hparams.py: activation's grid "
        "holds 'gelu': unknown activation 'gelu' (valid: tanh, relu, lrelu, "
        "swish, sigmoid)"),
    "an empty grid": (
        "lr", "()", "hparams.py: lr's grid is empty (give one value or more, "
        "or remove grid= to use the default)"),
    "a duplicate value": (
        "lr", "(1e-3, 1e-2, 1e-3)", "hparams.py: lr's grid holds 0.001 twice "
        "(give each value once)"),
}


@pytest.mark.parametrize("case", HPARAMS_EDITS)
def test_an_edited_grid_is_checked_like_a_flag(case, tmp_path, capsys,
                                               monkeypatch):
    """In-process, through both entry points: one line, exit 2, nothing
    written."""
    name, grid, expected = HPARAMS_EDITS[case]
    edited = dataclasses.replace(hparams.FIELDS_BY_NAME[name],
                                 grid=eval(grid))
    monkeypatch.setattr(hparams, "FIELDS", tuple(
        edited if f.name == name else f for f in hparams.FIELDS))
    for entry, main, flags, folder in (
            ("train.py", train.main, train.FLAGS, "--workdir"),
            ("tune.py", tune.main, tune.FLAGS, "--sweep_dir")):
        out = tmp_path / entry
        status = cli.run([entry, f"{folder}={out}"], main, flags)
        assert refused(capsys, status, out) == f"error: {expected}"


@pytest.mark.skipif(not os.path.exists(os.path.join(ROOT, ".venv")),
                    reason="train.bash needs the project's .venv")
@pytest.mark.slow
@pytest.mark.parametrize("case", HPARAMS_EDITS)
def test_train_bash_refuses_an_edited_grid_once(case, tmp_path):
    """The user's way: hparams.py edited, then train.bash: one line on
    stderr, exit 2, no restart, no sweep folder; before TensorFlow loads
    (a second at most)."""
    name, grid, expected = HPARAMS_EDITS[case]
    copy = repo_copy(tmp_path)
    edit_grid(copy, name, grid)
    sweep = tmp_path / "exp"
    env = {k: v for k, v in os.environ.items() if k != "BPFREE_VERBOSE"}
    result = subprocess.run([str(copy / "train.bash"), str(sweep)],
                            capture_output=True, text=True, timeout=120,
                            env=env)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"error: {expected}"]
    assert result.stdout == ""
    assert not sweep.exists()


def test_flags_and_tuner_names_are_the_fields():
    flag_values = cli.make_flags({})
    for field in hparams.FIELDS:
        assert field.name in flag_values


def test_flag_values_pin_list_or_search_all():
    flag_values = cli.make_flags({})
    flag_values(["prog", "--lr=1e-3,1e-2", "--algorithm=all",
                 "--nobatch_norm", "--arch=16C5-P2-64"])
    given = cli.given_on_command_line(flag_values)
    assert given["lr"] == (1e-3, 1e-2)
    # every rule, the control (shallow) aside: fifteen
    assert given["algorithm"] == hparams.RULES_IN_ALL
    assert len(given["algorithm"]) == 15
    assert "shallow" not in given["algorithm"]
    assert given["batch_norm"] == (False,)
    values = sweep_plan.search_space(given)
    assert values["arch"] == ("16C5-P2-64",)
    assert values["activation"] == hparams.FIELDS_BY_NAME["activation"].grid
    assert values["seed"] == (0,)  # no grid: the default alone
