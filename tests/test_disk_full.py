"""A sweep that cannot write (a full disk) stops with one line and exit
status 4, is not retried, loses nothing and records no trial as failed; the
same command finishes it once there is room, as if it had never stopped.

The disk fills twice: by injection (faults.py makes one chosen atomic
write fail with ENOSPC, a backup inside the second trial, while the small
records after it still fit), and for real, on a small tmpfs mounted in a
user namespace (skipped where the system does not allow one), where every
writer meets the full disk: HDF5, Keras' CSV log, TensorFlow's event
files, keras-tuner's records.
"""

import collections
import glob
import json
import os
import shutil
import subprocess

import pandas as pd
import pytest

import cli
from runtime import faults
from runtime import folders
from runtime import resume
import tune
from conftest import ROOT

# Starts processes, kills them or fills disks (-m "not slow" leaves it out).
pytestmark = pytest.mark.slow

FLAGS = ["--dataset=digits", "--algorithm=dfa,bp", "--lr=1e-3,1e-2",
         "--arch=16", "--epochs=2", "--objective=loss", "--use_xla=false",
         "--batch_norm=false"]
COMPARED = ["loss", "accuracy", "test_loss", "test_accuracy", "epochs_run"]
NO_SPACE = "No space left on device"


def sweep_command(sweep):
    return ["tune.py", f"--sweep_dir={sweep}", *FLAGS]


def run_sweep(sweep) -> int:
    return cli.run(sweep_command(sweep), tune.main, tune.FLAGS)


def results(sweep):
    frame = pd.read_csv(os.path.join(sweep, "results.csv"))
    return frame.sort_values("trial_id").reset_index(drop=True)


def executions(sweep):
    return sorted(glob.glob(os.path.join(sweep, "trials", "*", "exec*")))


def starts(workdir):
    return [a["start_epoch"] for a in resume.attempts(workdir)]


def tuner_statuses(sweep):
    statuses = []
    for path in glob.glob(os.path.join(sweep, "tuner", "trial_*",
                                       "trial.json")):
        with open(path) as f:
            statuses.append(json.load(f)["status"])
    return statuses


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted sweep, and every atomic write it made, in order."""
    sweep = str(tmp_path_factory.mktemp("disk_full") / "reference")
    written = []
    real = faults.write_point
    faults.write_point = written.append
    try:
        assert run_sweep(sweep) == 0
    finally:
        faults.write_point = real
    return sweep, written


def assert_one_line_naming(stderr, path_part):
    errors = [line for line in stderr.splitlines()
              if line.startswith("error:")]
    assert len(errors) == 1, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert f"{NO_SPACE}; what was written before is kept" in errors[0]
    assert errors[0].startswith(f"error: cannot write {path_part}")


def assert_finished_like(sweep, reference_sweep):
    frame, expected = results(sweep), results(reference_sweep)
    assert set(frame["status"]) == {"COMPLETED"} and len(frame) == 4
    assert frame["trial_id"].str[:4].tolist() == \
        expected["trial_id"].str[:4].tolist()
    assert frame[COMPARED].equals(expected[COMPARED])
    assert not glob.glob(os.path.join(sweep, "trials", "*", "*",
                                      "failure.json"))
    assert not glob.glob(os.path.join(sweep, "trials", "*", "*", "backup"))


def test_injected_full_disk_stops_the_sweep_and_the_rerun_finishes_it(
        reference, tmp_path, capsys, monkeypatch):
    reference_sweep, written = reference
    # The second trial's backup of its second epoch does not fit on the
    # disk; the small records after it would (so the trial could be
    # recorded as failed, and must not be).
    [second_backup] = [n for n, path in enumerate(written, 1)
                       if "/trials/t001-" in path
                       and path.endswith("backup/epoch2.keras")]
    sweep = str(tmp_path / "exp")
    monkeypatch.setattr(faults, "_passes", collections.Counter())
    monkeypatch.setenv(faults.DISK_FULL_ENV, str(second_backup))
    assert run_sweep(sweep) == 4
    assert_one_line_naming(capsys.readouterr().err,
                           f"{sweep}/trials/t001-")

    done, stopped = executions(sweep)  # the first finished, the second not
    assert os.path.exists(os.path.join(done, "metrics.json"))
    assert folders.read_json(os.path.join(stopped, "backup",
                                         resume.STATE))["epoch"] == 1
    assert not glob.glob(os.path.join(sweep, "trials", "*", "*",
                                      "failure.json"))
    assert "FAILED" not in tuner_statuses(sweep)
    assert "INVALID" not in tuner_statuses(sweep)
    finished = open(os.path.join(done, "metrics.json")).read()

    monkeypatch.delenv(faults.DISK_FULL_ENV)  # room again
    assert run_sweep(sweep) == 0
    assert open(os.path.join(done, "metrics.json")).read() == finished
    assert starts(done) == [0]  # not run again
    assert starts(stopped) == [0, 1]  # resumed from its backup
    assert_finished_like(sweep, reference_sweep)


def user_namespaces() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-rm", "sh", "-c",
         "mount -t tmpfs -o size=64k tmpfs /mnt 2>/dev/null || "
         "mount -t tmpfs -o size=64k tmpfs \"$HOME\""],
        capture_output=True, timeout=30)
    return probe.returncode == 0


def disk_usage_kib(folder) -> int:
    return int(subprocess.run(["du", "-sk", folder], capture_output=True,
                              text=True, check=True).stdout.split()[0])


# Inside a user and mount namespace: a small tmpfs on $MNT, the sweep on
# it until the disk is full, a copy of what it left, the tmpfs grown (the
# disk freed), the same command again, a copy of the finished sweep.
SCRIPT = """
set -u
mount -t tmpfs -o size=${SIZE}k tmpfs "$MNT"
BPFREE_MAX_RESTARTS=3 "$ROOT/train.bash" "$MNT/exp" "$@" \\
    >"$OUT/first.out" 2>"$OUT/first.err"
echo $? >"$OUT/first.status"
cp -a "$MNT/exp" "$OUT/left"
mount -o remount,size=256m "$MNT"
BPFREE_MAX_RESTARTS=3 "$ROOT/train.bash" "$MNT/exp" "$@" \\
    >"$OUT/second.out" 2>"$OUT/second.err"
echo $? >"$OUT/second.status"
cp -a "$MNT/exp" "$OUT/final"
"""


@pytest.mark.skipif(not user_namespaces(),
                    reason="needs unprivileged user namespaces (unshare "
                           "-rm) to mount a small tmpfs")
def test_a_real_full_disk_stops_the_sweep_and_the_rerun_finishes_it(
        reference, tmp_path):
    reference_sweep, _ = reference
    mount, out = tmp_path / "disk", tmp_path / "out"
    mount.mkdir()
    out.mkdir()
    size = disk_usage_kib(reference_sweep) // 2  # full mid-sweep
    env = {**os.environ, "MNT": str(mount), "OUT": str(out), "ROOT": ROOT,
           "SIZE": str(size)}
    subprocess.run(["unshare", "-rm", "bash", "-c", SCRIPT, "script",
                    *FLAGS], env=env, check=True, timeout=900)
    first_err = (out / "first.err").read_text()
    assert (out / "first.status").read_text().strip() == "4", first_err
    assert "restarting" not in first_err and "crashed" not in first_err
    assert_one_line_naming(first_err, f"{mount}/exp/")

    left = str(out / "left")
    assert not glob.glob(os.path.join(left, "trials", "*", "*",
                                      "failure.json"))
    assert "FAILED" not in tuner_statuses(left)
    assert "INVALID" not in tuner_statuses(left)
    finished = {os.path.relpath(d, left): open(
        os.path.join(d, "metrics.json")).read() for d in executions(left)
        if os.path.exists(os.path.join(d, "metrics.json"))}
    backed_up = {os.path.relpath(d, left): folders.read_json(
        os.path.join(d, "backup", resume.STATE))["epoch"]
        for d in executions(left)
        if os.path.exists(os.path.join(d, "backup", resume.STATE))}
    assert finished and len(finished) < 4  # it stopped mid-sweep

    second_err = (out / "second.err").read_text()
    assert (out / "second.status").read_text().strip() == "0", second_err
    final = str(out / "final")
    assert_finished_like(final, reference_sweep)
    for run, text in finished.items():  # finished runs were not redone
        assert open(os.path.join(final, run, "metrics.json")).read() == text
        assert len(resume.attempts(os.path.join(final, run))) == 1
    for run, epoch in backed_up.items():  # backed-up runs resumed
        assert starts(os.path.join(final, run))[-1] == epoch
        assert starts(os.path.join(final, run)).count(0) == 1


def test_a_single_run_stopped_by_a_full_disk_resumes_bit_identical(
        tmp_path, capsys, monkeypatch):
    import train
    flags = ["--dataset=digits", "--arch=16", "--epochs=2",
             "--use_xla=false", "--dropout=0.1"]

    def single_run(workdir):
        return cli.run(["train.py", *flags, f"--workdir={workdir}"],
                       train.main, train.FLAGS)
    written = []
    monkeypatch.setattr(faults, "write_point", written.append)
    assert single_run(tmp_path / "reference") == 0
    monkeypatch.undo()
    [second_backup] = [n for n, path in enumerate(written, 1)
                       if path.endswith("backup/epoch2.keras")]
    stopped = tmp_path / "stopped"
    monkeypatch.setattr(faults, "_passes", collections.Counter())
    monkeypatch.setenv(faults.DISK_FULL_ENV, f"{second_backup}:all")
    capsys.readouterr()
    assert single_run(stopped) == 4
    assert_one_line_naming(capsys.readouterr().err,
                           f"{stopped}/backup/epoch2.keras")
    monkeypatch.delenv(faults.DISK_FULL_ENV)
    assert single_run(stopped) == 0
    assert starts(str(stopped)) == [0, 1]
    expected, got = (json.loads((tmp_path / run / "metrics.json").read_text())
                     for run in ("reference", "stopped"))
    for timing in ("train_seconds", "compile_seconds"):
        expected.pop(timing), got.pop(timing)
    assert got == expected
