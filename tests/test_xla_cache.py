"""XLA's persistent compilation cache (xla_cache.py): a second process
that compiles the same functions loads them and computes the same bits;
nothing half written ever reaches the shared folder."""

import json
import os
import subprocess
import sys

import xla_cache
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
    return metrics


def published(cache):
    return sorted(os.path.basename(p) for p in xla_cache.entries(
        os.path.join(cache, os.listdir(cache)[0])))


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
