"""One sweep process per folder: the sweep lock.

A sweep folder is held by the process that runs it, through an exclusive
`flock` on `<sweep>/sweep.lock`; the file names the holder (pid, host,
start time).  A second sweep on the same folder is refused with one line
naming the holder.  The kernel releases the lock when its holder ends,
however it ends (SIGKILL included), so a lock file left behind never blocks
a rerun.  keras-tuner's chief/worker mode puts several processes on one
folder by design: the chief holds the lock, the workers do not take it.

A process holds a folder until it releases it or ends; holding it again
from the same process (a rerun in one Python session, after an error)
is not refused.
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
import sys
import time

from runtime.errors import StorageError, UsageError

LOCK_FILE = "sweep.lock"
_held: dict = {}  # real path of a sweep folder -> its SweepLock


def check_not_held(sweep_dir: str) -> None:
    """Refuses, at once (before TensorFlow and the data load), a sweep
    folder another process holds; `hold_sweep` takes it later."""
    path = os.path.join(sweep_dir, LOCK_FILE)
    if os.path.realpath(sweep_dir) in _held or not os.path.exists(path):
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # (hold_sweep says what is wrong with it)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise UsageError(in_use(sweep_dir, holder(path))) from None
    except OSError:
        pass  # a file system without locks: hold_sweep warns
    finally:
        os.close(fd)  # (releases the probe's lock)


def in_use(sweep_dir: str, who: str) -> str:
    return (f"{sweep_dir} is in use by another sweep ({who}); wait for it "
            "to end, or use a new folder (to run one sweep with several "
            "processes, use the chief/worker mode: README, 'Several "
            "machines')")


def holder(path: str) -> str:
    """Who holds a sweep's lock, in words, from the file it wrote."""
    try:
        with open(path) as f:
            record = json.load(f)
        return (f"pid {record['pid']} on host {record['host']}, since "
                f"{record['since']}")
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that is starting"


def hold_sweep(sweep_dir: str) -> "SweepLock":
    """Holds `sweep_dir` for this process; refuses one another holds."""
    key = os.path.realpath(sweep_dir)
    if key not in _held:
        _held[key] = SweepLock(sweep_dir)
    return _held[key]


class SweepLock:
    """Holds a sweep folder until `release` (or the process's end)."""

    def __init__(self, sweep_dir: str):
        self.key = os.path.realpath(sweep_dir)
        self.path = os.path.join(sweep_dir, LOCK_FILE)
        try:
            os.makedirs(sweep_dir, exist_ok=True)
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as error:
            raise StorageError(self.path, error.strerror) from error
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise UsageError(in_use(sweep_dir, holder(self.path))) from None
        except OSError as error:  # a file system without locks (old NFS)
            print(f"warning: cannot lock {self.path} ({error.strerror}); "
                  "a second sweep on this folder would not be refused",
                  file=sys.stderr)
        record = json.dumps({"pid": os.getpid(), "host": platform.node(),
                             "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        try:
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, (record + "\n").encode(), 0)
        except OSError as error:
            self.release()
            raise StorageError(self.path, error.strerror) from error

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the last descriptor unlocks
            self.fd = None
        if _held.get(self.key) is self:
            del _held[self.key]
