"""The framework's error types, below every other module, and the exit
status each gives on the command line (`cli.run`, train.bash).

    0  done
    1  a crash (a bug, or a fault not foreseen): train.bash restarts a sweep
    2  UsageError: bad input (a setting, a data file, a folder, a sweep
       record); fixed only by the user, so never retried
    3  RunFailed: the run itself failed (its loss diverged)

Every one of these prints one line, `error: <message>`.
"""


class UsageError(ValueError):
    """A bad setting: its message is the one line shown to the user."""

    exit_status = 2


class DataError(UsageError):
    """A dataset that cannot be read: missing or malformed files."""


class RunFailed(RuntimeError):
    """A run that ended without a usable result (e.g. its loss diverged)."""

    exit_status = 3
