"""TensorBoard, started on a sweep folder, serves one HParams session per
trial with its hyperparameters and final metrics (asked over HTTP from a
real `tensorboard` process, as the dashboard asks)."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

import tune

QUICK = {"dataset": ("digits",), "arch": ("8",), "epochs": (1,),
         "objective": ("loss",), "use_xla": (False,), "batch_norm": (False,),
         "algorithm": ("dfa", "bp"), "lr": (1e-3, 1e-2)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url, body):
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def session_groups(port, deadline):
    url = f"http://127.0.0.1:{port}/data/plugin/hparams/session_groups"
    request = {"experimentName": "", "startIndex": 0, "sliceSize": 100,
               "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS",
                                   "STATUS_FAILURE", "STATUS_RUNNING"],
               "colParams": []}
    while True:
        try:
            groups = post(url, request).get("sessionGroups", [])
            if len(groups) >= 4 or time.time() > deadline:
                return groups
        except OSError:
            if time.time() > deadline:
                raise
        time.sleep(1)


def test_tensorboard_lists_every_trial_with_hparams_and_metrics(tmp_path):
    sweep = str(tmp_path / "exp")
    frame = tune.run_sweep(QUICK, sweep, verbose=False)
    port = free_port()
    board = os.path.join(os.path.dirname(sys.executable), "tensorboard")
    if not os.path.exists(board):
        pytest.skip("no tensorboard executable beside this Python")
    server = subprocess.Popen(
        [board, "--logdir", sweep, "--port", str(port), "--host",
         "127.0.0.1", "--load_fast=false", "--reload_interval=1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        groups = session_groups(port, time.time() + 90)
    finally:
        server.kill()
        _, errors = server.communicate()
    assert len(groups) == 4, errors[-2000:]
    by_trial = {g["sessions"][0]["name"].split("/")[-1]: g for g in groups}
    assert set(by_trial) == set(frame["trial_id"])
    for _, row in frame.iterrows():
        group = by_trial[row["trial_id"]]
        assert group["hparams"]["algorithm"] == row["algorithm"]
        assert group["hparams"]["lr"] == pytest.approx(row["lr"])
        metrics = {m["name"]["tag"]: m["value"]
                   for m in group["metricValues"]}
        assert metrics["test_accuracy"] == pytest.approx(
            row["test_accuracy"], rel=1e-6)
        assert group["sessions"][0]["status"] == "STATUS_SUCCESS"
