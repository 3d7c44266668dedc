"""Writes that are all or nothing: a crash leaves the old file or the new one,
never half of one (write to a temporary file beside it, then rename).

Files get the permissions the umask gives, as any new file (0644 under
umask 022), so that a team can read what a sweep wrote.  Any OSError while
writing (a full disk, a quota, a folder made read-only) becomes one
StorageError naming the file; the old file, if any, is left as it was.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import secrets

from runtime import faults
from runtime.errors import StorageError


def _new_file(folder: str, name: str) -> str:
    """An empty file of a fresh name in `folder`, created as open() would
    create it (mode 0666 less the umask; mkstemp's is 0600)."""
    while True:
        path = os.path.join(folder, f".tmp-{secrets.token_hex(4)}-{name}")
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL,
                             0o666))
            return path
        except FileExistsError:
            continue


@contextlib.contextmanager
def replacing(path: str, suffix: str = ""):
    """Yields a temporary path; on success it replaces `path`."""
    tmp = None
    try:
        faults.write_point(path)
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        tmp = _new_file(folder, suffix or os.path.basename(path))
        yield tmp
        os.replace(tmp, path)
    except OSError as error:
        raise StorageError(path, error.strerror or str(error)) from error
    finally:
        if tmp is not None and os.path.exists(tmp):
            with contextlib.suppress(OSError):
                os.remove(tmp)


def write_bytes(path: str, data: bytes) -> None:
    with replacing(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def write_text(path: str, text: str) -> None:
    write_bytes(path, text.encode())


def write_json(path: str, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_csv(path: str, frame) -> None:
    """Writes a pandas DataFrame."""
    write_text(path, frame.to_csv(index=False))


def save_model(model, path: str) -> None:
    """A Keras model as a .keras file (weights, optimizers' state).

    Built in memory, then written as bytes: HDF5 writing a file itself on a
    full disk fails in its destructors and can crash the process (SIGSEGV)
    instead of raising.  (`model.save` takes only paths; the function
    behind it takes a file object.)"""
    from keras.src.saving import saving_lib
    buffer = io.BytesIO()
    saving_lib.save_model(model, buffer)
    write_bytes(path, buffer.getvalue())
