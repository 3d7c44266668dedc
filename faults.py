"""Crash points, for the tests that prove a sweep survives SIGKILL and a
full disk.

    BPFREE_KILL_AT=<point>[:<n>]

makes the process kill itself with SIGKILL the n-th time (default: first)
it passes `point(<point>)`.  Unset, `point` does nothing.  The points:
`startup` (sweep planned, no trial begun), `epoch_end` (an epoch backed
up), `run_end` (a run's model.keras written, its metrics.json not yet),
`trial_end` (a trial recorded, the next not begun), `train_batch` (a
training batch done, mid-epoch; passed only when armed, see `armed`).

    BPFREE_DISK_FULL_AFTER=<n>

makes every atomic write (atomic.py: results, records, models, backups)
after the first n fail as on a full disk (OSError ENOSPC).
"""

from __future__ import annotations

import collections
import errno
import os
import signal

ENV = "BPFREE_KILL_AT"
DISK_FULL_ENV = "BPFREE_DISK_FULL_AFTER"
_passes: collections.Counter = collections.Counter()


def armed() -> bool:
    """Whether a kill is asked for (per-batch points cost nothing then)."""
    return bool(os.environ.get(ENV))


def point(name: str) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    wanted, _, nth = spec.partition(":")
    if wanted != name:
        return
    _passes[name] += 1
    if _passes[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)


def write_point(path: str) -> None:
    """Called before each atomic write of `path`."""
    spec = os.environ.get(DISK_FULL_ENV)
    if not spec:
        return
    _passes["write"] += 1
    if _passes["write"] > int(spec):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
