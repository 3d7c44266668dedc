"""XLA's persistent compilation cache, shared by the processes of a machine.

TensorFlow can save every executable it compiles with XLA to a folder and
load it, instead of compiling again, when a later process compiles the
same function (`--tf_xla_persistent_cache_directory` in TF_XLA_FLAGS).
Its key is the function's name and its HLO, and names carry a counter of
the process (`__inference_one_step_on_data_1234`), so a hit needs a
process that traces the same functions in the same order: the same
command run again (with another --seed, into another folder), each
process's first trials when they repeat another's, the test suite run
again.  Trials later in a sweep compile anew (measured: two trials of one
process never share a key, even with identical graphs).

Where: $BPFREE_XLA_CACHE, else $XDG_CACHE_HOME/bpfree/xla (by default
~/.cache/bpfree/xla), in a subfolder per TensorFlow version and kind of
CPU, `tf-2.21.0-x86_64-<digest>`: the executables are native code for the
CPU that compiled them, TensorFlow's key names neither, and XLA loads an
entry that needs instructions this CPU lacks with only a log line (then
the process may die by SIGILL).  The digest covers /proc/cpuinfo's
vendor, family, model, model name, stepping and instruction-set flags (on
ARM: implementer, architecture, variant, part, revision, features), so no
entry is ever loaded on another kind of CPU, and a cache folder shared by
several machines (over NFS) keeps one subfolder per kind.
`BPFREE_XLA_CACHE=off` turns it off; deleting the folder clears it.  Only
CPU executables are cached.  Each load logs lines that are harmless:
stderr_filter.py hides them.

Safety: TensorFlow writes an entry in place, and a truncated entry fails
every later run of that function (measured: OutOfRangeError), so a
process killed while writing would break the cache for good.  Here each
process compiles into a private folder that starts with links to every
published entry; `publish` (after each run, and at exit) moves its new,
complete entries into the shared folder by atomic rename.  The private
folder of a process that died is discarded, never published.  The shared
folder is kept under MAX_BYTES, oldest entries first.
"""

from __future__ import annotations

import atexit
import glob
import hashlib
import os
import platform
import re
import shutil

ENV = "BPFREE_XLA_CACHE"
MAX_BYTES = 1 << 30
DEVICE_TYPES = "CPU"  # (TensorFlow's device type: GPU executables are not kept)
_private: str | None = None  # this process's folder, once installed


def root() -> str | None:
    """The shared cache of this TensorFlow and CPU, None when off."""
    base = os.environ.get(ENV, "")
    if base.strip().lower() in ("off", "0", "false", "no"):
        return None
    if not base:
        base = os.path.join(os.environ.get("XDG_CACHE_HOME") or
                            os.path.expanduser("~/.cache"), "bpfree", "xla")
    return os.path.join(base, f"tf-{tensorflow_version()}-{cpu_tag()}")


def tensorflow_version() -> str:
    import importlib.metadata
    for name in ("tensorflow", "tensorflow-cpu"):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "unknown"


# /proc/cpuinfo's fields that name the CPU and its instruction sets: x86's,
# then ARM's, then POWER's and s390x's.  (Not its clock, cache, core count,
# microcode: they change nothing in the code XLA writes.)
CPU_FIELDS = ("vendor_id", "cpu family", "model", "model name", "stepping",
              "flags", "CPU implementer", "CPU architecture", "CPU variant",
              "CPU part", "CPU revision", "Features", "cpu", "features")


def cpu_tag(cpuinfo: str | None = None) -> str:
    """The machine and a digest of its CPU's model and instruction-set
    flags (every kind of core, on a machine that has several)."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:  # (not Linux)
            cpuinfo = f"cpu: {platform.processor()}"
    described = set()
    for line in cpuinfo.splitlines():
        name, colon, value = line.partition(":")
        if colon and name.strip() in CPU_FIELDS:
            described.add(f"{name.strip()}: {' '.join(value.split())}")
    digest = hashlib.sha256("\n".join(sorted(described)).encode())
    return f"{platform.machine()}-{digest.hexdigest()[:10]}"


def install() -> None:
    """Points TensorFlow at this process's cache folder; call before
    TensorFlow is imported.  Leaves a cache the user configured alone."""
    global _private
    shared = root()
    flags = without_inherited(os.environ.get("TF_XLA_FLAGS", ""))
    if shared is None or _private is not None or \
            "tf_xla_persistent_cache_directory" in flags:
        return
    try:
        os.makedirs(shared, exist_ok=True)
        discard_dead(shared)
        prune(shared)
        private = os.path.join(shared, "tmp", str(os.getpid()))
        shutil.rmtree(private, ignore_errors=True)
        os.makedirs(private)
        link_published(shared, private)
    except OSError:
        return  # (no usable cache folder: compile as without one)
    _private = private
    os.environ["TF_XLA_FLAGS"] = (
        f"{flags} --tf_xla_persistent_cache_directory={private} "
        f"--tf_xla_persistent_cache_device_types={DEVICE_TYPES}").strip()
    atexit.register(close)


_OURS = re.compile(r"--tf_xla_persistent_cache_directory=\S*"
                   r"[/\\]tmp[/\\]\d+(?=\s|$)|"
                   r"--tf_xla_persistent_cache_device_types=" + DEVICE_TYPES)


def without_inherited(flags: str) -> str:
    """TF_XLA_FLAGS less the settings a parent process's `install` made
    (a worker of a parallel sweep gets a private folder of its own)."""
    return " ".join(_OURS.sub("", flags).split())


def entries(folder: str) -> list[str]:
    return glob.glob(os.path.join(glob.escape(folder), "*.pb"))


def link_published(shared: str, private: str) -> None:
    """Links into `private` the shared entries it lacks (new ones that
    other processes published since)."""
    for entry in entries(shared):
        target = os.path.join(private, os.path.basename(entry))
        if not os.path.exists(target):
            try:
                os.link(entry, target)
            except OSError:
                pass  # (pruned meanwhile)


def publish() -> None:
    """Moves this process's new entries into the shared folder.  Call
    when no compile is in flight (compiles run inside the op that needs
    them, so: between runs)."""
    if _private is None or not os.path.isdir(_private):
        return
    shared = os.path.dirname(os.path.dirname(_private))
    for entry in entries(_private):
        target = os.path.join(shared, os.path.basename(entry))
        if os.path.exists(target):
            continue
        staging = os.path.join(shared, "tmp", f".{os.getpid()}.publishing")
        try:
            os.link(entry, staging)
            os.replace(staging, target)
        except OSError:
            pass
    link_published(shared, _private)


def close() -> None:
    """At exit: publish, then remove the private folder."""
    global _private
    publish()
    if _private is not None:
        shutil.rmtree(_private, ignore_errors=True)
        _private = None


def discard_dead(shared: str) -> None:
    """Removes the private folders of processes that no longer run (a
    killed process's entries may be half written)."""
    for folder in glob.glob(os.path.join(glob.escape(shared), "tmp", "*")):
        name = os.path.basename(folder)
        if name.isdigit() and not running(int(name)):
            shutil.rmtree(folder, ignore_errors=True)


def running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def prune(shared: str, max_bytes: int = MAX_BYTES) -> None:
    """Removes the oldest entries until the cache holds `max_bytes`."""
    sized = []
    for entry in entries(shared):
        try:
            stat = os.stat(entry)
        except OSError:
            continue
        sized.append((stat.st_mtime, stat.st_size, entry))
    total = sum(size for _, size, _ in sized)
    for _, size, entry in sorted(sized):
        if total <= max_bytes:
            break
        try:
            os.remove(entry)
        except OSError:
            pass
        total -= size
