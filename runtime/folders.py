"""The folders a run or a sweep writes into and the records it reads back:
refusing an unusable folder, or a damaged record, in one line before
anything is written."""

from __future__ import annotations

import json
import os

from runtime.errors import UsageError


def check_writable(path: str, flag: str) -> None:
    """Refuses a folder that cannot be created or written: a regular file,
    a path through a file, a folder without write permission."""
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        where = ("is a file" if existing == os.path.abspath(path)
                 else f"is inside {existing}, which is a file")
        raise UsageError(f"{flag}={path} {where}, not a folder (give a new "
                         "or an existing folder)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{flag}={path}: cannot write in {existing} "
                         "(permission denied, or a read-only file system); "
                         "choose a folder you can write in")


def read_json(path: str, required=(), remedy: str = "") -> dict | None:
    """A JSON object written by a run or a sweep, or None when absent; a
    damaged one (a write that never finished, an edit by hand) is refused,
    naming the file, what is wrong and `remedy`: what to do."""
    if not os.path.exists(path):
        return None
    remedy = remedy or ("remove the run's folder "
                        f"({os.path.dirname(path)}) and rerun the sweep to "
                        "redo that run")
    try:
        with open(path) as f:
            record = json.load(f)
    except (OSError, ValueError) as error:
        raise UsageError(f"{path} is damaged ({type(error).__name__}); "
                         f"{remedy}") from None
    if not isinstance(record, dict):
        raise UsageError(f"{path} is damaged (no JSON object); {remedy}")
    missing = [k for k in required if k not in record]
    if missing:
        raise UsageError(f"{path} is damaged (no {', '.join(missing)}); "
                         f"{remedy}")
    return record
