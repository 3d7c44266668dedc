"""keras-tuner's chief/worker mode: a chief serves the grid, two workers
on 127.0.0.1 run it, and every trial is run exactly once."""

import os
import socket
import subprocess
import sys

import pandas as pd
import pytest

from runtime import resume

# Starts processes, kills them or fills disks (-m "not slow" leaves it out).
pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = ["--dataset=digits", "--algorithm=dfa,bp,cce", "--lr=1e-3,1e-2",
         "--arch=8", "--epochs=1", "--objective=loss", "--use_xla=false",
         "--batch_norm=false"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(tuner_id, sweep, port):
    env = {**os.environ, "KERASTUNER_TUNER_ID": tuner_id,
           "KERASTUNER_ORACLE_IP": "127.0.0.1",
           "KERASTUNER_ORACLE_PORT": str(port)}
    return subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "tune.py"),
         f"--sweep_dir={sweep}", *FLAGS], env=env, cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_a_chief_and_two_workers_run_every_trial_once(tmp_path):
    sweep, port = str(tmp_path / "exp"), free_port()
    chief = start("chief", sweep, port)
    workers = [start(f"worker{k}", sweep, port) for k in (1, 2)]
    for process in [*workers, chief]:
        output, _ = process.communicate(timeout=600)
        assert process.returncode == 0, output[-3000:]
    frame = pd.read_csv(os.path.join(sweep, "results.csv"))
    assert len(frame) == 6 and frame["trial_id"].is_unique
    assert set(frame["status"]) == {"COMPLETED"}
    ran = {}
    for trial in frame["trial_id"]:
        [attempt] = resume.attempts(os.path.join(sweep, "trials", trial,
                                                 "exec0"))
        ran[attempt["tuner_id"]] = ran.get(attempt["tuner_id"], 0) + 1
    assert set(ran) == {"worker1", "worker2"}, ran  # both took trials
