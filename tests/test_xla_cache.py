"""XLA's persistent compilation cache (xla_cache.py): a second process
that compiles the same functions loads them and computes the same bits;
nothing half written ever reaches the shared folder; no entry is loaded on
another kind of CPU."""

import json
import os
import re
import subprocess
import sys

import pytest

from runtime import xla_cache
from conftest import ROOT

RUN = ["--dataset=digits", "--arch=8", "--epochs=1", "--algorithm=dfa",
       "--batch_norm=true"]


def single_run(workdir, cache):
    env = {**os.environ, xla_cache.ENV: str(cache)}
    env.pop("TF_XLA_FLAGS", None)
    done = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"),
                           *RUN, f"--workdir={workdir}"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    with open(os.path.join(workdir, "metrics.json")) as f:
        metrics = json.load(f)
    metrics.pop("train_seconds")
    metrics.pop("compile_seconds")
    return metrics


def published(cache):
    return sorted(os.path.basename(p) for p in xla_cache.entries(
        os.path.join(cache, os.listdir(cache)[0])))


@pytest.mark.slow
def test_a_second_process_loads_what_the_first_compiled(tmp_path):
    cache = tmp_path / "cache"
    first = single_run(tmp_path / "a", cache)
    entries = published(cache)
    assert len(entries) >= 3  # the train step and the evaluations
    second = single_run(tmp_path / "b", cache)
    assert published(cache) == entries  # nothing compiled anew
    assert second == first  # the same bits
    [shared] = os.listdir(cache)
    assert os.listdir(os.path.join(cache, shared, "tmp")) == []  # tidied


@pytest.mark.slow
def test_entries_of_a_killed_process_are_discarded_not_published(
        tmp_path, monkeypatch):
    monkeypatch.setenv(xla_cache.ENV, str(tmp_path))
    monkeypatch.delenv("TF_XLA_FLAGS", raising=False)
    shared = xla_cache.root()
    ended = subprocess.Popen(["true"])
    ended.wait()
    dead = ended.pid  # (a process that has ended)
    half = os.path.join(shared, "tmp", str(dead))
    os.makedirs(half)
    with open(os.path.join(half, "k__1__2__CPU.pb"), "wb") as f:
        f.write(b"\x0a\x05ha")  # a truncated entry
    complete = os.path.join(shared, "k__3__4__CPU.pb")
    with open(complete, "wb") as f:
        f.write(b"whole")
    monkeypatch.setattr(xla_cache, "_private", None)
    monkeypatch.setattr(xla_cache.atexit, "register", lambda f: None)
    xla_cache.install()
    try:
        private = xla_cache._private
        assert not os.path.exists(half)  # its process is gone
        assert os.listdir(private) == ["k__3__4__CPU.pb"]  # linked
        assert f"--tf_xla_persistent_cache_directory={private}" in \
            os.environ["TF_XLA_FLAGS"]
        with open(os.path.join(private, "k__5__6__CPU.pb"), "wb") as f:
            f.write(b"new")
        xla_cache.publish()
        assert published(tmp_path) == ["k__3__4__CPU.pb", "k__5__6__CPU.pb"]
    finally:
        xla_cache.close()
    assert not os.path.exists(private)


def test_a_worker_gets_a_folder_of_its_own_and_the_cache_keeps_its_size(
        tmp_path):
    inherited = ("--xla_x=1 --tf_xla_persistent_cache_directory=/c/tf-1/tmp/"
                 "412 --tf_xla_persistent_cache_device_types=CPU")
    assert xla_cache.without_inherited(inherited) == "--xla_x=1"
    mine = "--tf_xla_persistent_cache_directory=/mine"
    assert xla_cache.without_inherited(mine) == mine  # the user's: kept
    for age, name in enumerate(["old", "mid", "new"]):
        path = tmp_path / f"{name}.pb"
        path.write_bytes(b"x" * 100)
        os.utime(path, (1000 + age, 1000 + age))
    xla_cache.prune(str(tmp_path), max_bytes=250)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mid.pb", "new.pb"]


X86 = """\
processor\t: {n}
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 17
model name\t: AMD EPYC
stepping\t: 1
microcode\t: 0x1000065
cpu MHz\t\t: {mhz}
cpu cores\t: {cores}
flags\t\t: fpu sse2 avx2 fma avx512f
bogomips\t: 5192.29

"""
ARM = """\
processor\t: {n}
BogoMIPS\t: 50.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics asimddp
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x3
CPU part\t: 0xd0c
CPU revision\t: 1

"""


def cpuinfo(block, changed=(), cores=2, mhz=2596.148):
    """/proc/cpuinfo of `cores` cores like `block`, with `changed` fields
    ((name, value) pairs)."""
    for name, value in changed:
        block = re.sub(rf"^({name}\s*: ).*$",
                       lambda m: m.group(1) + value, block, flags=re.M)
    return "".join(block.format(n=n, mhz=mhz + n, cores=cores)
                   for n in range(cores))


def test_the_cache_is_kept_per_kind_of_cpu():
    for block in (X86, ARM):
        tag = xla_cache.cpu_tag(cpuinfo(block))
        assert re.fullmatch(r"\w+-[0-9a-f]{10}", tag)
        # The same CPU: another clock, more cores, newer microcode.
        assert xla_cache.cpu_tag(cpuinfo(
            block, [("microcode", "0x1000070")], cores=8, mhz=3400.0)) == tag
    # Another CPU: any field that names it (the same flags on another model
    # shared a folder before).
    x86 = xla_cache.cpu_tag(cpuinfo(X86))
    for field in [("vendor_id", "GenuineIntel"), ("cpu family", "6"),
                  ("model", "1"), ("model name", "AMD EPYC 9654"),
                  ("stepping", "2"), ("flags", "fpu sse2 avx2 fma")]:
        assert xla_cache.cpu_tag(cpuinfo(X86, [field])) != x86, field
    arm = xla_cache.cpu_tag(cpuinfo(ARM))
    for field in [("CPU implementer", "0x61"), ("CPU part", "0xd40"),
                  ("CPU variant", "0x1"), ("CPU revision", "2"),
                  ("Features", "fp asimd")]:
        assert xla_cache.cpu_tag(cpuinfo(ARM, [field])) != arm, field
    # Cores of two kinds (big.LITTLE): both count.
    little = cpuinfo(ARM, [("CPU part", "0xd05")])
    assert xla_cache.cpu_tag(cpuinfo(ARM) + little) not in (
        arm, xla_cache.cpu_tag(little))
