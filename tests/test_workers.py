"""Parallel trials on one machine (`--workers`, launcher.py): a parallel
sweep gives what the serial sweep gives, bit for bit, through crashed
workers and a SIGKILL of the whole process group, and runs every trial
exactly once, none redone from scratch."""

import glob
import json
import os
import signal
import subprocess
import time

import pandas as pd
import pytest

import cli
import grid_search
from runtime import resume
from runtime import step_cache
import tune
from conftest import ROOT

FLAGS = ["--dataset=digits", "--algorithm=bp,dfa",
         "--batch_norm=false,true", "--lr=1e-2", "--arch=16", "--epochs=2",
         "--objective=loss", "--dropout=0.1", "--use_xla=false"]
GIVEN = {"dataset": ("digits",), "algorithm": ("bp", "dfa"),
         "batch_norm": (False, True), "lr": (1e-2,), "arch": ("16",),
         "epochs": (2,), "objective": ("loss",), "dropout": (0.1,),
         "use_xla": (False,)}
KEY = ["algorithm", "batch_norm"]
COMPARED = ["loss", "accuracy", "test_loss", "test_accuracy"]


def train_bash(sweep, *args, **env):
    environment = {k: v for k, v in os.environ.items()
                   if not k.startswith(("KERASTUNER", "BPFREE_KILL",
                                        "BPFREE_STOP"))}
    environment.update(env)
    return subprocess.Popen(
        [os.path.join(ROOT, "train.bash"), sweep, *FLAGS, *args],
        env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True)


def table(sweep):
    frame = pd.read_csv(os.path.join(sweep, "results.csv"))
    assert len(frame) == 4 and frame["trial_id"].is_unique
    assert set(frame["status"]) == {"COMPLETED"}
    return frame.sort_values(KEY).reset_index(drop=True)


def runs(sweep):
    trials = os.path.join(sweep, "trials")
    return sorted(os.path.join(trials, t, "exec0")
                  for t in os.listdir(trials)
                  if os.path.isdir(os.path.join(trials, t)))


def starts(run):
    return [a["start_epoch"] for a in resume.attempts(run)]


def invocations(sweep):
    with open(os.path.join(sweep, "sweep.json")) as f:
        return json.load(f)["invocations"]


@pytest.fixture(scope="module")
def serial(tmp_path_factory):
    """The same sweep run serially, in this process."""
    sweep = str(tmp_path_factory.mktemp("serial") / "exp")
    tune.run_sweep(GIVEN, sweep, verbose=False)
    return table(sweep)


@pytest.mark.slow
def test_two_workers_give_the_serial_results_bit_for_bit_through_crashes(
        serial, tmp_path):
    # Every worker process SIGKILLs itself after its 3rd backed-up epoch
    # (a crash inside its second trial); the launcher starts it again.
    sweep = str(tmp_path / "exp")
    run = train_bash(sweep, "--workers=2", BPFREE_KILL_AT="epoch_end:3")
    out, err = run.communicate(timeout=600)
    assert run.returncode == 0, err[-3000:]
    assert "crashed (killed by signal KILL); restarting it (1/5)" in err and "Traceback" not in err

    frame = table(sweep)
    assert frame[KEY].equals(serial[KEY])
    assert frame[COMPARED].equals(serial[COMPARED])  # bit for bit
    workers = {resume.attempts(run)[0]["tuner_id"] for run in runs(sweep)}
    assert workers == {"worker1", "worker2"}  # both ran trials
    for run in runs(sweep):
        assert starts(run).count(0) == 1, (run, starts(run))
    assert any(len(starts(run)) > 1 for run in runs(sweep))  # resumed
    assert [i["workers"] for i in invocations(sweep)] == [2]
    # One line per trial at its start and one at its end, and the table.
    assert sum(line.startswith("[") for line in out.splitlines()) >= 8
    assert "Results:" in out


def processes(group):
    """{pid: state} of the processes of `group` (/proc/<pid>/stat)."""
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == group:
            found[int(pid)] = fields[0]
    return found


def stopped_processes(group):
    """Pids of the processes of `group` stopped by SIGSTOP."""
    return [pid for pid, state in processes(group).items() if state == "T"]


@pytest.mark.slow
def test_a_parallel_sweep_killed_as_a_group_resumes_each_trial_once(
        serial, tmp_path):
    # Both workers stop themselves inside their second trial, after its
    # first epoch is backed up; then the whole group gets SIGKILL.
    sweep = str(tmp_path / "exp")
    first = train_bash(sweep, "--workers=2", BPFREE_STOP_AT="epoch_end:3")
    deadline = time.time() + 300
    while len(stopped_processes(first.pid)) < 2:
        assert first.poll() is None and time.time() < deadline, \
            first.communicate()[1][-3000:]
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)
    first.communicate(timeout=60)
    interrupted = [run for run in runs(sweep) if not os.path.exists(
        os.path.join(run, "metrics.json"))]
    assert len(interrupted) == 2  # one per worker, each after epoch 1

    # Rerun with another number of workers: a run setting, not the sweep's.
    rerun = train_bash(sweep, "--workers=1")
    _, err = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, err[-3000:]
    frame = table(sweep)
    assert frame[COMPARED].equals(serial[COMPARED])  # bit for bit
    for run in runs(sweep):
        assert starts(run).count(0) == 1, (run, starts(run))
    assert sorted(starts(run) for run in interrupted) == [[0, 1], [0, 1]]
    assert [i["workers"] for i in invocations(sweep)] == [2, 1]


@pytest.mark.parametrize("value", ["0", "two", "-1"])
def test_a_bad_number_of_workers_is_one_line_before_anything_is_written(
        tmp_path, capsys, value):
    sweep = tmp_path / "exp"
    status = cli.run(["tune.py", f"--sweep_dir={sweep}", f"--workers={value}",
                      *FLAGS], tune.main, tune.FLAGS)
    assert status == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: --workers={value}: must be a whole number of at least 1 "
        "(the trials run at once; 1: one after another)"]
    assert not sweep.exists()


@pytest.mark.slow
def test_sigterm_to_the_sweep_stops_every_worker(tmp_path):
    sweep = str(tmp_path / "exp")
    run = train_bash(sweep, "--workers=2", "--epochs=50")
    deadline = time.time() + 300
    while len(glob.glob(os.path.join(sweep, "trials", "*", "exec0",
                                     resume.ATTEMPTS))) < 2:
        assert run.poll() is None and time.time() < deadline, \
            run.communicate()[1][-3000:]
        time.sleep(0.2)
    with open(os.path.join(sweep, "sweep.lock")) as f:
        chief = json.load(f)["pid"]
    os.kill(chief, signal.SIGTERM)  # the chief alone, not its workers
    _, err = run.communicate(timeout=60)
    assert run.returncode == -signal.SIGTERM, err[-3000:]  # (the shell: 143)
    assert err.splitlines()[-1].startswith(
        "stopped by SIGTERM with its 2 workers (0 of ")
    assert err.splitlines()[-1].endswith(
        "rerun the same command to continue: finished trials are kept and "
        "the others resume from their last finished epoch")
    assert [s for s in processes(run.pid).values() if s != "Z"] == []


def test_each_worker_is_handed_the_trials_of_the_graph_it_ran_last():
    """Two workers asking in turn over a grid whose learning rate is the
    outer dimension: each runs both rates of a graph, one after the other
    (its compiled steps are reused, step_cache.py); every configuration
    once."""
    grid = [dict(lr=lr, algorithm=a, batch_norm=b) for lr in (1e-3, 1e-2)
            for a in ("bp", "dfa") for b in (False, True)]
    pending, last, ran = list(grid), {}, {"w0": [], "w1": []}
    while pending:
        for worker in ("w0", "w1"):
            if not pending:
                break
            config = grid_search.next_config(pending, last.get(worker), [
                g for w, g in last.items() if w != worker])
            pending.remove(config)
            last[worker] = step_cache.graph_of(config)
            ran[worker].append(config)
    assert sorted(map(str, ran["w0"] + ran["w1"])) == sorted(map(str, grid))
    for configs in ran.values():
        graphs = [step_cache.graph_of(c) for c in configs]
        assert graphs[0::2] == graphs[1::2]  # pairs of one graph
        assert [c["lr"] for c in configs] == [1e-3, 1e-2] * 2
    assert ran["w0"][0] == grid[0]  # the first worker starts the grid


def test_a_worker_waits_for_the_last_trials_of_a_graph_another_holds():
    """The last trial of a graph another worker ran last waits for that
    worker (a reused step) rather than being traced again; many do not."""
    one = dict(lr=1e-2, algorithm="dfa")
    held = step_cache.graph_of(one)
    assert grid_search.next_config([one], "my graph", [held]) is None
    many = [dict(one, seed=s) for s in range(3)]
    assert grid_search.next_config(many, "my graph", [held]) == many[0]
    assert grid_search.next_config([one], "my graph", []) == one  # nobody holds it
    assert grid_search.next_config([one], "my graph", [held],
                            may_wait=False) == one  # waited long enough


def test_the_workers_start_before_the_chief_loads_tensorflow(
        tmp_path, monkeypatch):
    """run_sweep starts the workers before it opens the sweep and its
    tuner (where TensorFlow loads), and stops them if that fails."""
    import launcher
    calls = []

    class Pool:
        def stop(self):
            calls.append("stop")

    def prestart(sweep_dir, given, workers, announce=True):
        calls.append(("prestart", workers))
        return Pool()

    def open_sweep_and_tuner(*args):
        calls.append("open")
        raise RuntimeError("stop here")
    monkeypatch.setattr(launcher, "prestart", prestart)
    monkeypatch.setattr(tune, "open_sweep_and_tuner", open_sweep_and_tuner)
    with pytest.raises(RuntimeError, match="stop here"):
        tune.run_sweep(GIVEN, str(tmp_path / "sweep"), verbose=False,
                       workers=2)
    assert calls == [("prestart", 2), "open", "stop"]


def test_a_waiting_worker_reads_the_port_once_published(tmp_path):
    import launcher
    pool = launcher.WorkerPool(["true"], [{}, {}],
                               str(tmp_path / "oracle" / "port"))
    os.makedirs(tmp_path / "oracle")
    pool.publish_port(43210)
    assert launcher.wait_for_port(pool.port_file) == "43210"
    assert [env["KERASTUNER_ORACLE_PORT"] for env in pool.environments] \
        == ["43210", "43210"]  # (a worker started again gets it at once)
    assert not os.path.exists(pool.port_file + ".partial")
    pool.stop()
    assert not os.path.exists(tmp_path / "oracle")
