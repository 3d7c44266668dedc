"""Crash points, for the tests that prove a sweep survives SIGKILL and a
full disk.

    BPFREE_KILL_AT=<point>[:<n>]

makes the process kill itself with SIGKILL the n-th time (default: first)
it passes `point(<point>)`.  Unset, `point` does nothing.  The points:
`startup` (sweep planned, no trial begun), `epoch_end` (an epoch backed
up), `run_end` (a run's model.keras written, its metrics.json not yet),
`trial_end` (a trial recorded, the next not begun), `train_batch` (a
training batch done, mid-epoch; passed only when armed, see `armed`),
`report_figure` (report.py: its table written, a figure about to be).

    BPFREE_STOP_AT=<point>[:<n>]

makes it stop itself (SIGSTOP) there instead, the n-th time, so that a
test can kill a whole process group at a known moment (the workers of a
parallel sweep, each stopped inside a trial).

    BPFREE_DISK_FULL_AT=<n>[:all]

makes the n-th atomic write (atomic.py: results, records, models, backups;
counting from 1) fail as on a full disk (OSError ENOSPC): that one only, as
when a large file no longer fits but small records still do, or with
`:all` every write from it on.
"""

from __future__ import annotations

import collections
import errno
import os
import signal

ENV = "BPFREE_KILL_AT"
STOP_ENV = "BPFREE_STOP_AT"
DISK_FULL_ENV = "BPFREE_DISK_FULL_AT"
_passes: collections.Counter = collections.Counter()


def armed() -> bool:
    """Whether a kill is asked for (per-batch points cost nothing then)."""
    return bool(os.environ.get(ENV) or os.environ.get(STOP_ENV))


def point(name: str) -> None:
    _passes[name] += 1
    for env, signum in ((ENV, signal.SIGKILL), (STOP_ENV, signal.SIGSTOP)):
        wanted, _, nth = os.environ.get(env, "").partition(":")
        if wanted == name and _passes[name] == int(nth or 1):
            os.kill(os.getpid(), signum)


def write_point(path: str) -> None:
    """Called before each atomic write of `path`."""
    spec = os.environ.get(DISK_FULL_ENV)
    if not spec:
        return
    nth, _, every = spec.partition(":")
    _passes["write"] += 1
    if _passes["write"] == int(nth) or (every == "all"
                                        and _passes["write"] > int(nth)):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
