"""Hides the lines TensorFlow logs, harmlessly, for each executable it loads
from XLA's compilation cache (xla_cache.py), for the whole life of an entry
point's process.

Once the cache is warm, every load prints two or three C++ log lines of
1,000 to 3,000 characters on stderr (HARMLESS below says what each says
and why it is harmless).  They come long after TensorFlow's start-up, so
quiet.py's import-time filter does not see them, and they are ERROR lines,
so TF_CPP_MIN_LOG_LEVEL=2 shows them.

`install()` (cli.run calls it for the program's own main, before
TensorFlow is imported) replaces file descriptor 2, where C++ and Python
write alike, by a pipe read by a small separate process: this file, run
with `python -I -S` (no site-packages, no `re`: ~15 ms of CPU at start, in
parallel with the entry point's own start).  It writes every line to the
original stderr as soon as it is read, except the harmless ones; the start
of a line is held back only while it may still turn out harmless, and for
HOLD_SECONDS at most.  Being a process of its own, it loses nothing when
the entry point dies abruptly (an abort in C++, os._exit, SIGKILL): it
reads the pipe to its end.  It never receives SIGINT, SIGTERM or SIGHUP
(blocked before it starts), so Ctrl-C, which reaches the whole process
group, stops the entry point while the filter forwards its last lines.  At
a normal exit the entry point gives stderr back and waits (DRAIN_SECONDS at
most) for the filter to finish, so that its last `error: ...` line comes
before the shell's prompt.  Processes it starts (`--workers`) inherit the
pipe, so the same filter reads them, and install none of their own (ENV
names the pipe).  Not installed when verbose (-v, BPFREE_VERBOSE=1:
everything is shown), once TensorFlow is imported, or when stderr is not
writable.
"""

import os
import sys

ENV = "BPFREE_STDERR_FILTER"  # "device:inode" of the pipe that fd 2 is
HOLD_SECONDS = 0.2  # a held line start is written if nothing follows
DRAIN_SECONDS = 2.0  # an exiting entry point waits this long, at most

_HEADER_MAX = 160  # bytes: a C++ log line's header is shorter

# The lines hidden: (severity, C++ file, start of the message).  Each is
# logged for an entry that then loads and runs correctly.
HARMLESS = (
    # TensorFlow writes a cache entry with WriteBinaryProto but reads it
    # with ReadTextOrBinaryProto (tensorflow/compiler/jit/
    # device_executable_persistor.h), which tries protobuf's text format
    # first: that attempt logs this line, then the binary parse succeeds.
    # Had it failed too, TensorFlow would raise an error, not log a line.
    (b"E", b"text_format.cc",
     b"Error parsing text-format tensorflow.XlaSerializedCacheEntry: "),
    # XLA compares the LLVM features of the machine that compiled the entry
    # with llvm::sys::getHostCPUFeatures() (xla/service/cpu/
    # cpu_aot_loader.cc), but its CPU compiler adds the tuning hints
    # +prefer-no-gather and +prefer-no-scatter, which host detection never
    # reports: the check fires on the very machine that compiled the entry
    # (openxla/xla#44565).  Newer XLA skips the features named prefer-* and
    # fast-* there: hints, not instructions.  Any other feature (+avx512f)
    # is a real mismatch, which could end in SIGILL: it is shown.
    (b"E", b"cpu_aot_loader.cc",
     b"Loading XLA:CPU AOT result. Target machine feature +prefer-"),
    (b"E", b"cpu_aot_loader.cc",
     b"Loading XLA:CPU AOT result. Target machine feature +fast-"),
)
_SEVERITIES = {severity for severity, _, _ in HARMLESS}


def log_line(line: bytes):
    """(severity, C++ file, message) of an absl log line, such as "E0000
    00:00:1796185666.526797    9391 text_format.cc:378] Error ...", else
    None.  (By hand: importing `re` would triple the filter's start-up.)"""
    end = line.find(b"] ", 0, _HEADER_MAX)
    fields = line[:end].split() if end > 0 else []
    if len(fields) != 4:
        return None
    severity_date, clock, thread, where = fields
    source, _, number = where.rpartition(b"/")[2].rpartition(b":")
    if len(severity_date) != 5 or severity_date[:1] not in b"IWEF" or \
            not severity_date[1:].isdigit() or not thread.isdigit() or \
            not clock.replace(b":", b"").replace(b".", b"").isdigit() or \
            not number.isdigit() or not source:
        return None
    return severity_date[:1], source, line[end + 2:]


def harmless(line: bytes, complete: bool = True) -> bool:
    """Whether `line` (without its newline) is one of HARMLESS; with
    `complete` False, whether a line that starts so may still be one."""
    parsed = log_line(line)
    if parsed is None:  # (or not yet: "E0000 00:0")
        return not complete and len(line) < _HEADER_MAX and \
            line[:1] in _SEVERITIES and line[1:2] in b"0123456789"
    severity, source, message = parsed
    return any(severity == s and source == f and (
        message.startswith(start) or not complete and start.startswith(
            message)) for s, f, start in HARMLESS)


def passed(data: bytes) -> tuple[bytes, bytes]:
    """Splits what was read into (what to write now, the start of a line
    held back).  (A harmless line that follows the start of a line already
    written, such as a prompt, is dropped too: nothing else starts so.)"""
    lines = data.split(b"\n")
    rest = lines.pop()  # after the last newline
    out = b"".join(line + b"\n" for line in lines if not harmless(line))
    if harmless(rest, complete=False):
        return out, rest
    return out + rest, b""


def write(fd: int, data: bytes) -> None:
    while data:
        try:
            data = data[os.write(fd, data):]
        except BlockingIOError:  # (a non-blocking stderr, full)
            import select
            select.select([], [fd], [])


def main() -> None:
    """The filter: stdin (the pipe) to stdout (the original stderr) until
    every writer has closed the pipe."""
    import select
    held = b""
    try:
        while True:
            if held and not select.select([0], [], [], HOLD_SECONDS)[0]:
                write(1, held)  # (nothing followed it: not a log line)
                held = b""
                continue
            chunk = os.read(0, 1 << 16)
            if not chunk:
                break
            try:
                out, held = passed(held + chunk)
            except Exception:  # (a bug here must not cost a line)
                out, held = held + chunk, b""
            write(1, out)
        if held and not harmless(held):
            write(1, held)
    except OSError:
        pass  # (stderr is gone: its writers will find out as without us)


# --- In the entry point ------------------------------------------------------

_IGNORED = ("SIGINT", "SIGTERM", "SIGHUP")
_process = None  # the filter, once installed in this process


def pipe_id(fd: int) -> str:
    stat = os.fstat(fd)
    return f"{stat.st_dev}:{stat.st_ino}"


def wanted() -> bool:
    """Whether this process should filter its stderr (see the docstring)."""
    import fcntl

    from runtime import quiet
    if quiet.verbose() or "tensorflow" in sys.modules or \
            os.name != "posix" or not sys.executable:
        return False
    try:
        if os.environ.get(ENV) == pipe_id(2):
            return False  # (a worker: its parent's filter reads fd 2)
        mode = fcntl.fcntl(2, fcntl.F_GETFL) & os.O_ACCMODE
    except OSError:
        return False  # (no fd 2)
    return mode in (os.O_WRONLY, os.O_RDWR)


def install() -> None:
    """Sends this process's stderr through the filter, for its whole life
    (and its children's); call before TensorFlow is imported."""
    import atexit
    import signal
    import subprocess
    global _process
    if _process is not None or not wanted():
        return
    read_end, write_end = os.pipe()
    original = os.dup(2)  # (not inherited by children)
    ignored = {getattr(signal, name) for name in _IGNORED}
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, ignored)
    try:  # (the child keeps them blocked for life: no window at start-up)
        _process = subprocess.Popen(
            [sys.executable, "-I", "-S", os.path.abspath(__file__)],
            stdin=read_end, stdout=original, stderr=original)
    except OSError:
        for fd in (read_end, write_end, original):
            os.close(fd)
        return
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    os.close(read_end)
    sys.stderr.flush()
    os.dup2(write_end, 2)
    os.close(write_end)
    os.environ[ENV] = pipe_id(2)
    atexit.register(close, original)


def close(original: int) -> None:
    """At exit: stderr back, and the filter's last lines written first."""
    import subprocess
    try:
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    os.dup2(original, 2)  # (closes our end of the pipe)
    os.close(original)
    try:
        _process.wait(DRAIN_SECONDS)
    except subprocess.TimeoutExpired:
        pass  # (a child of ours still holds the pipe: it keeps the filter)


if __name__ == "__main__":
    main()
