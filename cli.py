"""Command-line entry points: one absl flag per field of hparams.py (same
name), the values the command line gives, and every bad input reported as
one line (`error: ...`) with exit status 2 (the other
statuses: errors.py).  `-v`/`--verbose` (or BPFREE_VERBOSE=1) shows the
details that are hidden by default (quiet.py).

Ctrl-C (SIGINT) and SIGTERM stop a run or a sweep where it is, with one
line saying where (progress.py) and that the same command resumes, and no
traceback; the process then ends by that signal (`exit_with`), as Python does
on Ctrl-C, so that a shell loop around it stops too (status 130 or 143).
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
from typing import Callable

from runtime import quiet
from runtime.errors import (Interrupted, RunFailed, StorageError, UsageError,
                    WorkerStopped, storage_error)
from hparams import FIELDS

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def make_flags(extra: dict[str, str]):
    """A fresh FlagValues: one flag per hparams field plus `extra`
    (name: help) string flags."""
    from absl import flags
    flag_values = flags.FlagValues()
    define_flags(flag_values)
    for name, help_text in extra.items():
        flags.DEFINE_string(name, None, help_text, flag_values=flag_values)
    flags.DEFINE_boolean(
        "verbose", False, "Show TensorFlow's start-up lines, keras-tuner's "
        "trial tables and tracebacks, and trackers on the epoch lines "
        f"(also ${quiet.VERBOSE_ENV}=1).", short_name="v",
        flag_values=flag_values)
    return flag_values


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


def run(argv: list[str], main: Callable, extra: dict[str, str]) -> int:
    """Parses argv and calls main(flag_values); returns the exit status."""
    from absl import flags
    stop_on_signals()
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
        if getattr(main, "__module__", None) == "__main__":
            # The program's own main, not a test's call: for the process's
            # whole life.
            from runtime import stderr_filter
            stderr_filter.install()
        from runtime import xla_cache
        xla_cache.install()  # (before TensorFlow reads TF_XLA_FLAGS)
        main(flag_values)
    except Interrupted as stop:
        from runtime import progress
        progress.clear_terminal_line()
        print(progress.stopped_line(stop.signum), file=sys.stderr,
              flush=True)
        return stop.exit_status
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


def stop_on_signals() -> None:
    """SIGINT and SIGTERM raise `Interrupted` where the process is; a
    second one while it stops is ignored (it stops already, in a moment:
    a traceback from inside the clean-up would say nothing more)."""
    def interrupt(signum, frame):
        for other in STOP_SIGNALS:
            signal.signal(other, signal.SIG_IGN)
        raise Interrupted(signum)
    for signum in STOP_SIGNALS:
        signal.signal(signum, interrupt)


def exit_with(status: int) -> None:
    """Ends an entry point with `status`; after an interrupt (130, 143),
    by the signal itself once the exit handlers ran (what was compiled
    published, stderr flushed), as Python does after a Ctrl-C.
    Registered first, the handler runs last."""
    signum = {128 + s: s for s in STOP_SIGNALS}.get(status)
    if signum is not None:
        def die():
            sys.stdout.flush()
            sys.stderr.flush()
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        _first_exit_handler.append(die)
    sys.exit(status)


_first_exit_handler: list = []  # what `_run_last` runs


@atexit.register
def _run_last() -> None:
    for handler in _first_exit_handler:
        handler()
