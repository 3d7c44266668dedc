"""Writes that are all or nothing: a crash leaves the old file or the new one,
never half of one (write to a temporary file beside it, then rename)."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile


@contextlib.contextmanager
def replacing(path: str, suffix: str = ""):
    """Yields a temporary path; on success it replaces `path`."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-",
                               suffix=suffix or os.path.basename(path))
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(path: str, text: str) -> None:
    with replacing(path) as tmp:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


def write_json(path: str, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_csv(path: str, frame) -> None:
    """Writes a pandas DataFrame."""
    write_text(path, frame.to_csv(index=False))
