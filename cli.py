"""Command-line entry points: flags generated from hparams.py, and every bad
input reported as one line (`error: ...`) with exit status 2 (the other
statuses: errors.py).  `-v`/`--verbose` (or BPFREE_VERBOSE=1) shows the
details that are hidden by default (quiet.py)."""

from __future__ import annotations

import sys
from typing import Callable

import space as space_lib
import quiet
from errors import (RunFailed, StorageError, UsageError, WorkerStopped,
                    storage_error)


def make_flags(extra: dict[str, str]):
    """A fresh FlagValues: one flag per hparams field plus `extra`
    (name: help) string flags."""
    from absl import flags
    flag_values = flags.FlagValues()
    space_lib.define_flags(flag_values)
    for name, help_text in extra.items():
        flags.DEFINE_string(name, None, help_text, flag_values=flag_values)
    flags.DEFINE_boolean(
        "verbose", False, "Show TensorFlow's start-up lines, keras-tuner's "
        "trial tables and tracebacks, and trackers on the epoch lines "
        f"(also ${quiet.VERBOSE_ENV}=1).", short_name="v",
        flag_values=flag_values)
    return flag_values


def run(argv: list[str], main: Callable, extra: dict[str, str]) -> int:
    """Parses argv and calls main(flag_values); returns the exit status."""
    from absl import flags
    flag_values = make_flags(extra)
    if any(arg in ("-h", "--help", "--helpfull") for arg in argv[1:]):
        print(flag_values.get_help())
        return 0
    try:
        try:
            rest = flag_values(argv)
        except flags.Error as error:
            raise UsageError(str(error).splitlines()[0]) from None
        if len(rest) > 1:
            raise UsageError(f"unexpected argument(s) {rest[1:]} (settings "
                             "are given as --name=value; see --help)")
        quiet.set_verbose(flag_values.verbose)
        quiet.install()
        import xla_cache
        xla_cache.install()  # (before TensorFlow reads TF_XLA_FLAGS)
        main(flag_values)
    except (UsageError, RunFailed, StorageError, WorkerStopped) as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_status
    except Exception as error:  # a write failed outside our own writers
        storage = storage_error(error)
        if storage is None:
            raise
        print(f"error: {storage}", file=sys.stderr)
        return storage.exit_status
    return 0
