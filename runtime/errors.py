"""The framework's error types, below every other module, and the exit
status each gives on the command line (`cli.run`, train.bash).

    0  done
    1  a crash (a bug, or a fault not foreseen): train.bash restarts a sweep
    2  UsageError: bad input (a setting, a data file, a folder, a sweep
       record, a sweep folder in use); fixed only by the user, so never
       retried
    3  RunFailed: the run itself failed (its loss diverged)
    4  StorageError: a file could not be written (disk full, quota, a
       folder made read-only or removed): what was written before is
       intact, so rerunning the same command once there is room continues
       where it stopped; never retried by train.bash (it would only fail
       again)
  130  Interrupted by Ctrl-C (SIGINT), 143 by SIGTERM: the process ends
       by that signal once it has said where it stopped (so a calling
       shell stops too); rerunning the same command resumes

Every one of these prints one line, `error: <message>`.
"""

from __future__ import annotations

import errno
import os
import re


class UsageError(ValueError):
    """A bad setting: its message is the one line shown to the user."""

    exit_status = 2


class DataError(UsageError):
    """A dataset that cannot be read: missing or malformed files."""


class RunFailed(RuntimeError):
    """A run that ended without a usable result (e.g. its loss diverged)."""

    exit_status = 3


class StorageError(RuntimeError):
    """Writing `path` failed for `cause` (the system's words for it)."""

    exit_status = 4

    def __init__(self, path: str, cause: str):
        self.path, self.cause = path, cause
        super().__init__(
            f"cannot write {path}: {cause}; what was written before is "
            "kept: make room (or repair the folder) and rerun the same "
            "command to continue")


class Interrupted(BaseException):
    """Ctrl-C (SIGINT) or SIGTERM: the run stops where it is, with one line
    saying where and that the same command resumes (cli.py).  A
    BaseException, like KeyboardInterrupt, so that no `except Exception`
    of a trial records it as the trial's failure."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
        self.exit_status = 128 + signum  # 130, 143: as the shell says it


class WorkerStopped(RuntimeError):
    """A worker of a parallel sweep (launcher.py) ended with a status that
    is not retried (2, 3, 4): the sweep stops with the same status; the
    worker wrote its own error line before."""

    def __init__(self, worker: str, exit_status: int, meaning: str):
        self.exit_status = exit_status
        super().__init__(f"{worker} stopped the sweep ({meaning}, exit "
                         f"status {exit_status}: its error is above); the "
                         "other workers were stopped")


# Failures that come from the storage, not from the program (our own
# writers, atomic.py, turn any OSError into a StorageError; these are
# recognised in the writes of others: Keras' CSV log, TensorFlow's event
# files).
STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS,
                  errno.EIO, errno.EACCES, errno.EPERM)
_CAUSES = [os.strerror(code) for code in STORAGE_ERRNOS]
# TensorFlow's file errors: "<path>; No space left on device".
_TF_FILE_ERROR = re.compile(
    r"(\S+); (" + "|".join(map(re.escape, _CAUSES)) + ")")


def storage_error(error: BaseException, path: str | None = None):
    """The StorageError that `error`, raised while writing, stands for, or
    None.  Knows Python's OSError and TensorFlow's file errors (which name
    the file and the system's cause in their message)."""
    if isinstance(error, StorageError):
        return error
    if isinstance(error, OSError) and error.errno in STORAGE_ERRNOS:
        return StorageError(error.filename or path or "a file",
                            error.strerror or os.strerror(error.errno))
    if type(error).__module__.startswith("tensorflow"):
        found = _TF_FILE_ERROR.search(str(error))
        if found:
            return StorageError(found.group(1), found.group(2))
    return None
