"""stderr_filter.py: the lines TensorFlow logs for each entry it loads from
XLA's cache are hidden, and nothing else; what a process writes last gets
through however it ends; its children write through the same filter."""

import os
import select
import signal
import subprocess
import sys
import threading
import time

import pytest

import cli
from runtime import quiet
from runtime import stderr_filter
from runtime import xla_cache
from conftest import ROOT

# What TensorFlow 2.21 printed for each entry loaded from a warm cache (the
# feature lists shortened).
TEXT_FORMAT = (
    "E0000 00:00:1796185317.241840    2978 text_format.cc:378] Error "
    "parsing text-format tensorflow.XlaSerializedCacheEntry: 2:1: Expected "
    "identifier, got: 5")
AOT = ("E0000 00:00:1796185317.254042    2978 cpu_aot_loader.cc:220] Loading "
       "XLA:CPU AOT result. Target machine feature {} is not  supported on "
       "the host machine. Machine type used for XLA:CPU compilation doesn't "
       "match the machine type for execution. Compile machine features: "
       "[+avx2,+prefer-no-gather,+prefer-no-scatter] vs host machine "
       "features: [avx2]. This could lead to execution errors such as "
       "SIGILL.")
HARMLESS = [TEXT_FORMAT, AOT.format("+prefer-no-scatter"),
            AOT.format("+prefer-no-gather"),
            AOT.format("+fast-variable-perlane-shuffle")]
KEPT = [
    AOT.format("+avx512f"),  # a real mismatch: SIGILL may follow
    TEXT_FORMAT.replace("XlaSerializedCacheEntry", "GraphDef"),
    TEXT_FORMAT.replace("E0000", "F0000"),  # (not the severity it has)
    "E0000 00:00:1796185317.254042    2978 some_file.cc:12] real failure",
    "E0000 00:00:1796185974.315803    4376 cuda_platform.cc:52] failed "
    "call to cuInit: INTERNAL: CUDA error",
    "2025-09-17 14:44:05.157831: E external/local_xla/xla/service/cpu/"
    "cpu_aot_loader.cc:220] Loading XLA:CPU AOT result. Target machine "
    "feature +avx512f is not  supported",
    "Traceback (most recent call last):",
    '  File "/x/train.py", line 12, in <module>',
    "ValueError: Error parsing text-format tensorflow."
    "XlaSerializedCacheEntry: 2:1",
    "error: --lr=fast: not a valid float",
    "E",
    "Epoch 1/2",
    "",
]
FILTER = [sys.executable, "-I", "-S", stderr_filter.__file__]


def test_only_the_lines_a_cache_load_logs_are_harmless():
    for line in HARMLESS:
        assert stderr_filter.harmless(line.encode()), line
    for line in KEPT:
        assert not stderr_filter.harmless(line.encode()), line
    # The start of a line: held back only while it may still be harmless.
    assert stderr_filter.harmless(TEXT_FORMAT[:30].encode(), complete=False)
    assert stderr_filter.harmless(TEXT_FORMAT[:80].encode(), complete=False)
    assert not stderr_filter.harmless(KEPT[0][:150].encode(), complete=False)
    assert not stderr_filter.harmless(b"Enter a value: ", complete=False)
    # (What to write, the line start held back.)
    assert stderr_filter.passed(b"a\nEnter a value: ") == (
        b"a\nEnter a value: ", b"")
    start = TEXT_FORMAT[:50].encode()
    assert stderr_filter.passed(b"a\n" + start) == (b"a\n", start)
    # A harmless line after a prompt already written: the prompt's line
    # goes on as if it had not come.
    assert stderr_filter.passed(f"{TEXT_FORMAT}\n42\n".encode()) == (
        b"42\n", b"")


@pytest.mark.slow
def test_a_stream_cut_anywhere_loses_only_the_harmless_lines():
    lines = [line for pair in zip(KEPT, HARMLESS * 4) for line in pair]
    stream = ("\n".join(lines) + "\nno newline at the end").encode()
    pieces = [stream[k:k + 97] for k in range(0, len(stream), 97)]
    done = subprocess.Popen(FILTER, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE)
    for piece in pieces:  # (a write each: the filter reads what came)
        done.stdin.write(piece)
        done.stdin.flush()
    out, _ = done.communicate(timeout=30)
    assert out.decode() == "".join(f"{line}\n" for line in KEPT) + \
        "no newline at the end"


def read_for(pipe, seconds):
    """What the filter wrote within `seconds` (its input left open)."""
    got, deadline = b"", time.time() + seconds
    while time.time() < deadline:
        if select.select([pipe], [], [], 0.05)[0]:
            got += os.read(pipe.fileno(), 1 << 16)
    return got


@pytest.mark.slow
def test_the_start_of_a_line_is_written_at_once():
    done = subprocess.Popen(FILTER, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE)
    try:
        done.stdin.write(b"Enter a value: ")  # (a prompt: no newline)
        done.stdin.flush()
        assert read_for(done.stdout, 1.0) == b"Enter a value: "
        # What may begin a harmless line waits, but not for long.
        done.stdin.write(b"\nE0")
        done.stdin.flush()
        assert read_for(done.stdout, stderr_filter.HOLD_SECONDS + 1.0) == \
            b"\nE0"
    finally:
        done.stdin.close()
        done.wait(30)


def child(body, verbose=False, **popen):
    """A Python process that sends its stderr through the filter, then
    runs `body`."""
    script = "\n".join([
        "import os, signal, subprocess, sys",
        f"sys.path.insert(0, {ROOT!r})",
        "from runtime import stderr_filter",
        "stderr_filter.install()",
        "print(stderr_filter._process and stderr_filter._process.pid, "
        "flush=True)",
        f"os.write(2, {TEXT_FORMAT!r}.encode() + b'\\n')",
        body])
    env = {k: v for k, v in os.environ.items()
           if k not in (quiet.VERBOSE_ENV, stderr_filter.ENV)}
    if verbose:
        env[quiet.VERBOSE_ENV] = "1"
    return subprocess.Popen([sys.executable, "-c", script], env=env,
                            **{"stdout": subprocess.PIPE,
                               "stderr": subprocess.PIPE, **popen})


NO_CORE = "import resource; resource.setrlimit(resource.RLIMIT_CORE, (0, 0))"
DEATHS = {"abort": f"{NO_CORE}; os.abort()", "os._exit": "os._exit(3)",
          "SIGKILL": "os.kill(os.getpid(), signal.SIGKILL)",
          "SIGSEGV": f"{NO_CORE}; import ctypes; ctypes.string_at(0)",
          "exit": "sys.exit(2)"}


@pytest.mark.slow
@pytest.mark.parametrize("death", DEATHS)
def test_the_last_words_get_through_however_the_process_ends(death):
    done = child("sys.stderr.write('Fatal Python error: x\\n')\n"
                 "sys.stderr.flush()\n"
                 "os.write(2, b'error: the last words')\n" + DEATHS[death])
    out, err = done.communicate(timeout=60)
    assert out.split()[0].isdigit()  # (a filter ran)
    assert err.decode().splitlines()[-2:] == ["Fatal Python error: x",
                                              "error: the last words"]
    assert "XlaSerializedCacheEntry" not in err.decode()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM,
                                    signal.SIGHUP])
@pytest.mark.slow
def test_a_signal_to_the_whole_group_ends_the_process_not_the_filter(signum):
    """Ctrl-C reaches every process of the terminal's foreground group."""
    done = child(f"sys.stderr.write('before the signal\\n')\n"
                 f"sys.stderr.flush()\nos.killpg(0, {int(signum)})\n"
                 "import time; time.sleep(30)", start_new_session=True)
    out, err = done.communicate(timeout=60)
    assert done.returncode != 0
    lines = err.decode().splitlines()
    assert "before the signal" in lines
    if signum == signal.SIGINT:  # (Python's own handler: a traceback)
        assert lines[-1] == "KeyboardInterrupt"


@pytest.mark.slow
def test_at_exit_the_filter_finishes_before_the_process_ends(tmp_path):
    """...so that the last error line comes before the shell's prompt."""
    with open(tmp_path / "stderr", "wb") as stderr:
        done = child("sys.stdin.readline()\n"
                     "print('error: the last words', file=sys.stderr)\n"
                     "sys.exit(2)", stdin=subprocess.PIPE, stderr=stderr)
    pid = int(done.stdout.readline())
    os.kill(pid, signal.SIGSTOP)  # a filter slow to write...
    threading.Timer(0.5, os.kill, (pid, signal.SIGCONT)).start()
    done.stdin.write(b"go\n")
    done.stdin.close()
    assert done.wait(30) == 2
    assert (tmp_path / "stderr").read_text() == "error: the last words\n"


@pytest.mark.slow
def test_a_worker_writes_through_its_parents_filter_and_adds_none():
    worker = "\n".join([
        "import os, sys", f"sys.path.insert(0, {ROOT!r})",
        "from runtime import stderr_filter", "stderr_filter.install()",
        "print('worker filter:', stderr_filter._process, flush=True)",
        f"os.write(2, {AOT.format('+prefer-no-gather')!r}.encode() + "
        "b'\\n')",
        "print('worker: a real line', file=sys.stderr)"])
    done = child(f"subprocess.run([sys.executable, '-c', {worker!r}])")
    out, err = done.communicate(timeout=60)
    assert out.decode().splitlines()[1] == "worker filter: None"
    assert err.decode() == "worker: a real line\n"


@pytest.mark.slow
def test_not_installed_when_verbose_or_stderr_unwritable_or_in_a_test(
        monkeypatch):
    done = child("", verbose=True)
    out, err = done.communicate(timeout=60)
    assert out.decode() == "None\n"
    assert err.decode() == TEXT_FORMAT + "\n"  # everything is shown
    with open(os.devnull, "rb") as read_only:  # (stderr not writable)
        done = child("", stderr=read_only)
        assert done.communicate(timeout=60)[0].decode() == "None\n"
    # cli.run installs it for the program's own main only, not a test's.
    installed = []
    monkeypatch.setattr(stderr_filter, "install",
                        lambda: installed.append(True))
    monkeypatch.setattr(quiet, "install", lambda: None)
    monkeypatch.setattr(xla_cache, "install", lambda: None)

    def main(flag_values):
        pass
    assert cli.run(["train.py"], main, {}) == 0
    assert installed == []
    main.__module__ = "__main__"
    assert cli.run(["train.py"], main, {}) == 0
    assert installed == [True]
