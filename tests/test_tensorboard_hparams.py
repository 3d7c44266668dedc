"""TensorBoard, started on a sweep folder, serves one HParams session per
execution, named by its rule and searched values, grouped by trial (one
row per trial, its metrics the mean over the executions), whose metrics
are its per-epoch train and validation curves at epochs 1, 2, ... (asked
over HTTP from a real `tensorboard` process, as the dashboard asks); one
run per execution, no curve written twice; no scalar is a single point."""

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

# Starts processes, kills them or fills disks (-m "not slow" leaves it out).
pytestmark = pytest.mark.slow

EPOCHS = 2
QUICK = {"dataset": ("digits",), "arch": ("8",), "epochs": (EPOCHS,),
         "objective": ("val_loss",), "use_xla": (False,),
         "batch_norm": (False,), "algorithm": ("dfa", "bp"),
         "lr": (1e-3, 1e-2), "executions_per_trial": (2,)}
EXECUTIONS = 2
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
                    len(g["sessions"]) == EXECUTIONS and all(
                        len(metric_evals(port, session["name"],
                                         VALIDATION_LOSS)) == EPOCHS
                        for session in g["sessions"])
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
    by_trial = {g["name"]: g for g in groups}
    assert set(by_trial) == set(frame["trial_id"])
    for trial, runs in frame.groupby("trial_id"):
        group = by_trial[trial]
        row = runs.iloc[0]
        # One session per execution; its (run) name says the rule and the
        # searched values.
        assert sorted(s["name"] for s in group["sessions"]) == [
            f"trials/{trial}/{row['algorithm']},lr={row['lr']:g}/exec{k}"
            for k in range(EXECUTIONS)]
        assert group["hparams"]["algorithm"] == row["algorithm"]
        assert group["hparams"]["lr"] == pytest.approx(row["lr"])
        metrics = {(m["name"]["group"], m["name"]["tag"]): m["value"]
                   for m in group["metricValues"]}
        # The table's value is the mean over the executions of each one's
        # last epoch: the final val_loss.
        assert metrics[("validation", "epoch_loss")] == pytest.approx(
            runs["val_loss"].mean(), rel=1e-5)
        assert ("train", "epoch_accuracy") in metrics
        assert {s["status"] for s in group["sessions"]} == {"STATUS_SUCCESS"}


def test_each_session_links_to_its_per_epoch_curves_from_epoch_1(served):
    sweep, frame, port, groups = served
    assert len(groups) == 4
    for group in groups:
        for session in group["sessions"]:
            trial, execution = session["name"].split("/")[1::2]
            history = pd.read_csv(os.path.join(sweep, "trials", trial,
                                               execution, "history.csv"))
            for metric, column in ((VALIDATION_LOSS, "val_loss"),
                                   ({"group": "train", "tag": "epoch_loss"},
                                    "loss")):
                series = metric_evals(port, session["name"], metric)
                assert [step for _, step, _ in series] == list(
                    range(1, EPOCHS + 1))
                assert [value for _, _, value in series] == pytest.approx(
                    history[column].tolist(), rel=1e-6)


def test_one_run_per_execution_and_no_curve_twice(served):
    """The folders TensorBoard lists as runs (those holding event files):
    the experiment, and per execution its session with its train and
    validation curves; nothing else."""
    sweep, frame, port, groups = served
    runs = sorted(os.path.relpath(folder, sweep)
                  for folder, _, files in os.walk(sweep)
                  if any(f.startswith("events.out.") for f in files))
    expected = ["trials"]
    for _, row in frame.iterrows():
        session = (f"trials/{row['trial_id']}/{row['algorithm']},"
                   f"lr={row['lr']:g}/exec{row['execution']}")
        expected += [session, f"{session}/train", f"{session}/validation"]
    assert runs == sorted(expected)
    assert len(frame) == 4 * EXECUTIONS


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
