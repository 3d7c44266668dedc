"""The command line and the sweep's search space, both made from the fields
of `hparams.py`: one absl flag per field with the same name, the values the
command line gives, a single run's configuration, and a sweep's grid."""

from __future__ import annotations

import itertools
from typing import Mapping, Sequence

import arch
from errors import UsageError
from hparams import (FIELDS, HParams, check, check_declarations,
                     check_network, defaults, with_default_arch)


def define_flags(flag_values=None) -> None:
    """Defines one absl flag per field (idempotent)."""
    from absl import flags
    flag_values = flags.FLAGS if flag_values is None else flag_values
    for field in FIELDS:
        if field.name in flag_values:
            continue
        choices = f" One of: {', '.join(map(str, field.choices))}, or all." \
            if field.choices else ""
        if field.multiple:
            choices = f" Any of: {', '.join(field.choices)}; all or none."
        grid = f" Sweep grid: {','.join(map(str, field.grid))}." \
            if field.grid else ""
        default = field.default_text or (
            field.default if field.default != "" else "none")
        help_text = f"{field.help}{choices} Default: {default}.{grid}"
        if field.multiple:  # repeatable: its value is a list of strings
            flag = flags.MultiFlag(
                flags.ArgumentParser(), flags.ArgumentSerializer(),
                field.name, None, help_text)
            flag.help = help_text  # (absl appends its own "repeat" line)
        else:
            flag = flags.Flag(
                flags.ArgumentParser(), flags.ArgumentSerializer(),
                field.name, None, help_text, boolean=field.type is bool)
        flags.DEFINE_flag(flag, flag_values)


def given_on_command_line(flag_values=None) -> dict[str, tuple]:
    """The fields set on the command line, each as its tuple of values."""
    from absl import flags
    flag_values = flags.FLAGS if flag_values is None else flag_values
    given = {}
    for field in FIELDS:
        text = flag_values[field.name].value
        if isinstance(text, list):  # a repeated (multiple) field
            text = ",".join(text)
        if text is not None:
            given[field.name] = field.parse(str(text))
    return given


def single_run(given: Mapping[str, Sequence]) -> HParams:
    """The configuration of one run: given values over the defaults."""
    check_declarations()
    for name, values in given.items():
        if len(values) != 1:
            raise UsageError(f"--{name}: a single run takes one value, got "
                             f"{len(values)} (use train.bash for a sweep)")
    return check(with_default_arch(defaults().replace(
        **{name: values[0] for name, values in given.items()}), given))


def search_space(given: Mapping[str, Sequence]) -> dict[str, tuple]:
    """Every field's values in a sweep: given values, else its grid, else its
    default alone (the arch: the dataset's).  Refuses, before any trial, an
    arch that does not fit one of the sweep's datasets."""
    check_declarations()
    space = {f.name: tuple(given.get(f.name) or f.grid or (f.default,))
             for f in FIELDS}
    if not given.get("arch"):
        archs = {d: arch.default_for(d) for d in space["dataset"]}
        if len(set(archs.values())) > 1:
            raise UsageError(
                "these datasets have different default archs ("
                + ", ".join(f"{d}: {a}" for d, a in archs.items())
                + "); give --arch, or sweep them separately")
        space["arch"] = tuple(dict.fromkeys(archs.values()))
    if not given.get("batch_norm") and not any(
            "batch_norm" in arch.reads_flags(a) for a in space["arch"]):
        space["batch_norm"] = (False,)  # every block pins its own
    network = ("arch", "dataset", "image_size", "batch_size",
               "problem_type", "batch_norm", "use_bias")
    for values in itertools.product(*(space[n] for n in network)):
        config = dict(zip(network, values))
        if config["problem_type"] == "classification" or not config[
                "image_size"]:
            check_network(config)
    return space


def grid(space: Mapping[str, Sequence], is_valid=lambda config: True):
    """Every valid configuration of the space, in a fixed order (the order of
    the fields, then of each field's values)."""
    names = list(space)
    for combination in itertools.product(*(space[n] for n in names)):
        config = dict(zip(names, combination))
        if is_valid(config):
            yield config
