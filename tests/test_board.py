"""TensorBoard, started on a sweep folder, serves one HParams session per
trial with its hyperparameters, named by its rule and searched values, whose
metrics are its per-epoch train and validation curves (asked over HTTP from
a real `tensorboard` process, as the dashboard asks); no scalar is a single
point."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pandas as pd
import pytest

import tune

EPOCHS = 2
QUICK = {"dataset": ("digits",), "arch": ("8",), "epochs": (EPOCHS,),
         "objective": ("val_loss",), "use_xla": (False,),
         "batch_norm": (False,), "algorithm": ("dfa", "bp"),
         "lr": (1e-3, 1e-2)}
VALIDATION_LOSS = {"group": "validation", "tag": "epoch_loss"}


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


def get(url):
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def session_groups(port):
    url = f"http://127.0.0.1:{port}/data/plugin/hparams/session_groups"
    request = {"experimentName": "", "startIndex": 0, "sliceSize": 100,
               "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS",
                                   "STATUS_FAILURE", "STATUS_RUNNING"],
               "colParams": []}
    return post(url, request).get("sessionGroups", [])


def metric_evals(port, session, metric):
    """[(wall time, step, value)] of a session's metric, as the HParams
    dashboard's "Show Metrics" asks for them."""
    url = f"http://127.0.0.1:{port}/data/plugin/hparams/metric_evals"
    return post(url, {"sessionName": session, "metricName": metric})


def until_loaded(port, deadline):
    """The session groups once TensorBoard has read every trial's curves."""
    while True:
        try:
            groups = session_groups(port)
            if len(groups) == 4 and all(
                    len(metric_evals(port, g["sessions"][0]["name"],
                                     VALIDATION_LOSS)) == EPOCHS
                    for g in groups):
                return groups
        except OSError:
            groups = []
        if time.time() > deadline:
            return groups
        time.sleep(1)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(sweep folder, its results, TensorBoard's port, its groups)."""
    board = os.path.join(os.path.dirname(sys.executable), "tensorboard")
    if not os.path.exists(board):
        pytest.skip("no tensorboard executable beside this Python")
    sweep = str(tmp_path_factory.mktemp("board") / "exp")
    frame = tune.run_sweep(QUICK, sweep, verbose=False)
    port = free_port()
    server = subprocess.Popen(
        [board, "--logdir", sweep, "--port", str(port), "--host",
         "127.0.0.1", "--load_fast=false", "--reload_interval=1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        groups = until_loaded(port, time.time() + 120)
        yield sweep, frame, port, groups
    finally:
        server.kill()
        server.communicate()


def test_tensorboard_lists_every_trial_with_hparams_and_metrics(served):
    sweep, frame, port, groups = served
    assert len(groups) == 4
    by_trial = {g["sessions"][0]["name"].split("/")[1]: g for g in groups}
    assert set(by_trial) == set(frame["trial_id"])
    for _, row in frame.iterrows():
        group = by_trial[row["trial_id"]]
        session = group["sessions"][0]["name"]
        # The session (run) name says the rule and the searched values.
        assert session == (f"trials/{row['trial_id']}/"
                           f"{row['algorithm']},lr={row['lr']:g}")
        assert group["hparams"]["algorithm"] == row["algorithm"]
        assert group["hparams"]["lr"] == pytest.approx(row["lr"])
        metrics = {(m["name"]["group"], m["name"]["tag"]): m["value"]
                   for m in group["metricValues"]}
        # The table's value is the curve's last epoch: the final val_loss.
        assert metrics[("validation", "epoch_loss")] == pytest.approx(
            row["val_loss"], rel=1e-5)
        assert ("train", "epoch_accuracy") in metrics
        assert group["sessions"][0]["status"] == "STATUS_SUCCESS"


def test_each_session_links_to_its_per_epoch_curves(served):
    sweep, frame, port, groups = served
    assert len(groups) == 4
    for group in groups:
        session = group["sessions"][0]["name"]
        trial = session.split("/")[1]
        history = pd.read_csv(os.path.join(sweep, "trials", trial, "exec0",
                                           "history.csv"))
        for metric, column in ((VALIDATION_LOSS, "val_loss"),
                               ({"group": "train", "tag": "epoch_loss"},
                                "loss")):
            series = metric_evals(port, session, metric)
            assert [step for _, step, _ in series] == list(range(EPOCHS))
            assert [value for _, _, value in series] == pytest.approx(
                history[column].tolist(), rel=1e-6)


def test_no_scalar_is_a_single_point(served):
    """Final values are not written as scalars of their own: every card in
    the Scalars tab is a curve over the epochs."""
    sweep, frame, port, groups = served
    base = f"http://127.0.0.1:{port}/data/plugin/scalars"
    tags = get(f"{base}/tags")
    assert any(run.endswith("/validation") for run in tags)
    for run, run_tags in tags.items():
        for tag in run_tags:
            query = urllib.parse.urlencode({"run": run, "tag": tag})
            points = get(f"{base}/scalars?{query}")
            assert len(points) == EPOCHS, (run, tag)
