"""Folders and records that can never work are bad input: one line, exit
status 2, nothing written, and train.bash does not retry them.

A sweep folder that is a file, sits inside a file or in a folder the user
cannot write; a damaged sweep.json, metrics.json or failure.json in a
sweep; a --workdir that is a file, inside a file or unwritable.  Root
writes in any folder whatever its mode: run by root, the unwritable cases
make the folder a read-only bind mount in a private mount namespace
(`unshare -rm`; skipped where the system allows none).
"""

import os
import shutil
import subprocess
import sys

import pytest

import cli
import train
import tune
from conftest import ROOT

# Starts processes, kills them or fills disks (-m "not slow" leaves it out).
pytestmark = pytest.mark.slow

SWEEP_FLAGS = ["--dataset=digits", "--arch=8", "--epochs=1", "--lr=1e-3",
               "--algorithm=dfa", "--objective=loss", "--use_xla=false",
               "--batch_norm=false"]
RUN_FLAGS = ["--dataset=digits", "--arch=8", "--epochs=1", "--use_xla=false"]
ROOT_USER = os.geteuid() == 0
# Runs "$@" with the folder "$0" read-only (for root, whom modes do not stop).
READ_ONLY = ('mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" "$0" '
             '&& exec "$@"')


def make_file(folder):
    path = folder / "file"
    path.write_text("not a folder\n")
    return path


def unwritable(folder):
    path = folder / "readonly"
    path.mkdir()
    path.chmod(0o555)
    return path


def damaged_sweep(name, text, what):
    """A finished sweep (copied from the fixture) with one record damaged."""
    def setup(folder, finished):
        sweep = folder / "exp"
        shutil.copytree(finished, sweep)
        [record] = list(sweep.glob(f"trials/*/exec0/{name}")) or [
            next(sweep.glob("trials/*/exec0")) / name]
        record.write_text(text)
        return sweep, f"{record} is damaged ({what}); remove the run's folder"
    return setup


# name: setup(folder, finished sweep) -> (the folder given, expected text)
SWEEP_CASES = {
    "sweep folder is a file": lambda d, _: (
        make_file(d), "is a file, not a folder"),
    "sweep folder inside a file": lambda d, _: (
        make_file(d) / "exp", f"is inside {d / 'file'}, which is a file"),
    "sweep folder in an unwritable folder": lambda d, _: (
        unwritable(d) / "exp", f"cannot write in {d / 'readonly'}"),
    "truncated sweep.json": lambda d, finished: truncated_plan(d, finished),
    "sweep.json that is no sweep record": lambda d, _: plan_text(
        d, '{"grid": 3}\n', "is damaged (no sweep_id, space, objective); "
        "restore it"),
    "sweep.json with a grid that is not one": lambda d, _: plan_text(
        d, '{"grid": 3, "sweep_id": "x", "space": {}, "objective": "loss"}',
        "is damaged (its grid or space is not what the sweep wrote)"),
    "truncated metrics.json": damaged_sweep("metrics.json", '{"loss": 0.',
                                            "JSONDecodeError"),
    "failure.json that is no record": damaged_sweep("failure.json", "[]\n",
                                                    "no JSON object"),
    "failure.json without its reason": damaged_sweep("failure.json", "{}",
                                                     "no reason"),
}
RUN_CASES = {
    "workdir is a file": lambda d: (make_file(d), "is a file, not a folder"),
    "workdir inside a file": lambda d: (
        make_file(d) / "run", f"is inside {d / 'file'}, which is a file"),
    "workdir in an unwritable folder": lambda d: (
        unwritable(d) / "run", f"cannot write in {d / 'readonly'}"),
}


def truncated_plan(folder, finished):
    sweep = folder / "exp"
    shutil.copytree(finished, sweep)
    text = (sweep / "sweep.json").read_text()  # cut after '"grid":'
    (sweep / "sweep.json").write_text(text[:text.index('"grid":') + 7])
    return sweep, f"{sweep / 'sweep.json'} is damaged (JSONDecodeError)"


def plan_text(folder, text, expected):
    sweep = folder / "exp"
    sweep.mkdir()
    (sweep / "sweep.json").write_text(text)
    return sweep, f"{sweep / 'sweep.json'} {expected}"


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    sweep = tmp_path_factory.mktemp("folders") / "finished"
    assert cli.run(["tune.py", f"--sweep_dir={sweep}", *SWEEP_FLAGS],
                   tune.main, tune.FLAGS) == 0
    return sweep


def snapshot(folder):
    """Every path below folder with its bytes and mode."""
    found = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = os.path.join(root, name)
            data = None if os.path.isdir(path) else open(path, "rb").read()
            found[os.path.relpath(path, folder)] = (data,
                                                   os.stat(path).st_mode)
    return found


def read_only_mounts(folder) -> bool:
    probe = folder / "probe"
    probe.mkdir()
    try:
        return subprocess.run(
            ["unshare", "-rm", "sh", "-c", READ_ONLY, str(probe), "sh",
             "-c", 'touch "$0/x"; test ! -e "$0/x"', str(probe)],
            capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False
    finally:
        shutil.rmtree(probe)


@pytest.fixture
def folder(request, tmp_path):
    """(where a case builds its folders, the folder to make read-only by a
    mount or None)."""
    if not (ROOT_USER and "unwritable" in request.node.name):
        return tmp_path, None
    if not read_only_mounts(tmp_path):
        pytest.skip("run as root, whom a folder's mode does not stop, on a "
                    "system that allows no private read-only mount")
    return tmp_path, tmp_path / "readonly"


def run(entry, args, read_only, capsys):
    """(exit status, stderr) of tune.py / train.py (in this process unless
    a folder must be mounted read-only) or train.bash."""
    if entry == "train.bash":
        command = [os.path.join(ROOT, "train.bash"), *args]
    elif read_only is None:
        main = {"tune": tune, "train": train}[entry]
        status = cli.run([f"{entry}.py", *args], main.main, main.FLAGS)
        return status, capsys.readouterr().err
    else:
        command = [sys.executable, os.path.join(ROOT, f"{entry}.py"), *args]
    if read_only is not None:
        command = ["unshare", "-rm", "sh", "-c", READ_ONLY, str(read_only),
                   *command]
    result = subprocess.run(command, capture_output=True, text=True,
                            timeout=300,
                            env={**os.environ, "BPFREE_MAX_RESTARTS": "3"})
    return result.returncode, result.stderr


def assert_refused(status, err, expected):
    assert status == 2, err[-3000:]
    lines = err.strip().splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0], err[-3000:]
    assert "Traceback" not in err
    assert "restarting" not in err and "crashed" not in err  # train.bash


@pytest.mark.parametrize("entry", ["tune", "train.bash"])
@pytest.mark.parametrize("case", SWEEP_CASES)
def test_an_unusable_sweep_folder_is_refused_and_nothing_written(
        case, entry, folder, finished, capsys):
    where, read_only = folder
    given, expected = SWEEP_CASES[case](where, finished)
    if entry == "train.bash":
        args = [str(given), *SWEEP_FLAGS]
    else:
        args = [f"--sweep_dir={given}", *SWEEP_FLAGS]
    before = snapshot(where)
    status, err = run(entry, args, read_only, capsys)
    assert_refused(status, err, expected)
    assert snapshot(where) == before


@pytest.mark.parametrize("case", RUN_CASES)
def test_an_unusable_workdir_is_refused_and_nothing_written(case, folder,
                                                            capsys):
    where, read_only = folder
    given, expected = RUN_CASES[case](where)
    before = snapshot(where)
    status, err = run("train", [f"--workdir={given}", *RUN_FLAGS], read_only,
                      capsys)
    assert_refused(status, err, expected)
    assert snapshot(where) == before
