"""Quiet by default: TensorFlow's start-up lines hidden, details on demand.

On a machine without a GPU, importing TensorFlow 2.21 prints four to six
lines from its C++ logging (absl's "WARNING: All log messages before
absl::InitializeLog()", oneDNN's notice, "Could not find cuda drivers",
cpu_feature_guard's, then "failed call to cuInit" when devices are first
listed).  They are written while its shared libraries load, before
`TF_CPP_MIN_LOG_LEVEL` is read, so no environment setting silences them
(`TF_ENABLE_ONEDNN_OPTS=0` hides one line but makes training ~35 % slower).

`install()` (the entry points call it before TensorFlow is imported) hooks
the first `import tensorflow`: while it runs, and while the devices are
listed, the process's stderr (file descriptor 2, where C++ writes) goes to
a temporary file; afterwards every line of it is written back except the
start-up notices: informational and warning lines, and the cuInit error
when no CUDA driver was found.  Anything else (an error on a GPU machine)
still reaches the user.

`-v`/`--verbose` on any entry point, or BPFREE_VERBOSE=1, shows everything:
TensorFlow's lines, keras-tuner's per-trial tables and tracebacks, and the
trackers on Keras' epoch lines.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import os
import re
import sys
import tempfile

VERBOSE_ENV = "BPFREE_VERBOSE"

# A C++ log line's severity: absl's "I0000 00:00:1795.5  4830 port.cc:153]"
# or TensorFlow's older "2025-09-17 14:44:05.1: I path/file.cc:32]".
_LOG_LINE = re.compile(r"^(?:([IWEF])\d{4} [\d:.]+ +\d+ |"
                       r"\d{4}-\d\d-\d\d [\d:.]+: ([IWEF]) )\S+:\d+\]")
_PRE_INIT = "WARNING: All log messages before absl::InitializeLog() is " \
    "called are written to STDERR"
_NO_DRIVER = "Could not find cuda drivers"
_CU_INIT = "failed call to cuInit"
_CPU_GUARD_CONTINUATION = "To enable the following instructions:"


def verbose() -> bool:
    """Whether the user asked for details (-v, or BPFREE_VERBOSE=1)."""
    return os.environ.get(VERBOSE_ENV, "").strip().lower() in (
        "1", "true", "yes")


def set_verbose(on: bool) -> None:
    """Records -v for this process and the ones it starts."""
    if on:
        os.environ[VERBOSE_ENV] = "1"


def not_noise(lines: list[str]) -> list[str]:
    """The lines written during TensorFlow's start-up that are not its
    start-up notices."""
    no_driver = any(_NO_DRIVER in line for line in lines)
    kept = []
    for line in lines:
        match = _LOG_LINE.match(line)
        severity = match and (match.group(1) or match.group(2))
        if line.strip() == _PRE_INIT or line.startswith(
                _CPU_GUARD_CONTINUATION) or not line.strip():
            continue
        if severity in ("I", "W"):
            continue
        if severity and no_driver and _CU_INIT in line:
            continue  # no GPU here: the failure says nothing new
        kept.append(line)
    return kept


@contextlib.contextmanager
def filtered_stderr():
    """Captures fd 2 (C++ and Python alike); replays what is not noise."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            text = capture.read().decode(errors="replace")
            for line in not_noise(text.splitlines()):
                print(line, file=sys.stderr)
            sys.stderr.flush()


class _QuietLoader(importlib.abc.Loader):
    """Runs the real loader of `tensorflow` under `filtered_stderr`, and
    lists the devices there too (where cuInit's failure is printed)."""

    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        with filtered_stderr():
            self.loader.exec_module(module)
            module.config.list_physical_devices()
        module.__loader__ = self.loader  # from now on, the real one
        if module.__spec__ is not None:
            module.__spec__.loader = self.loader


class _QuietFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        uninstall()  # once: this import is the first
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


_FINDER = _QuietFinder()


def install() -> None:
    """Hides TensorFlow's start-up lines unless verbose; a no-op once
    TensorFlow is imported (in tests, or a second entry point)."""
    if verbose() or "tensorflow" in sys.modules:
        return
    # Hides what TensorFlow logs once it reads this (XLA's notices...),
    # unless the user chose a level.
    if not os.environ.get("TF_CPP_MIN_LOG_LEVEL"):
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)


def uninstall() -> None:
    if _FINDER in sys.meta_path:
        sys.meta_path.remove(_FINDER)
