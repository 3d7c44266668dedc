"""Files a run and a sweep write get the permissions the umask gives (0644
under umask 022, folders 0755), so that a team can read the results; the
Docker image does not run as root."""

import os
import re

import keras
import pytest

from runtime import atomic
import hparams
import train
import tune
from conftest import ROOT

QUICK = {"dataset": ("digits",), "arch": ("8",), "epochs": (2,),
         "objective": ("loss",), "use_xla": (False,),
         "batch_norm": (False,), "algorithm": ("dfa",), "lr": (1e-3,)}


@pytest.fixture
def umask():
    def set_umask(mask):
        os.umask(mask)
    previous = os.umask(0o022)
    yield set_umask
    os.umask(previous)


def modes(folder):
    """{path relative to folder: permission bits} of every file and
    folder below it."""
    found = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = os.path.join(root, name)
            found[os.path.relpath(path, folder)] = os.stat(path).st_mode \
                & 0o777
    return found


def assert_modes(found, file_mode, dir_mode, folder):
    wrong = {path: oct(mode) for path, mode in found.items()
             if mode != (dir_mode if os.path.isdir(os.path.join(folder, path))
                         else file_mode)}
    assert wrong == {}


class BackupModes(keras.callbacks.Callback):
    """The backup's files as they are while the run goes on."""

    def __init__(self, backup):
        super().__init__()
        self.backup, self.seen = backup, {}

    def on_epoch_end(self, epoch, logs=None):
        if os.path.isdir(self.backup):  # epoch ≥ 1: the previous backup
            self.seen.update(modes(self.backup))


@pytest.mark.slow
def test_a_run_and_a_sweep_write_files_the_umask_allows(tmp_path, umask):
    run = tmp_path / "run"
    hp = hparams.make(dataset="digits", arch="8", epochs=2, use_xla=False)
    backup = BackupModes(str(run / "backup"))
    train.train_and_evaluate(hp, str(run), verbose=0, callbacks=[backup])
    files = modes(run)
    assert {"metrics.json", "history.csv", "model.keras",
            "attempts.jsonl"} <= set(files)
    assert {"state.json", "epoch1.keras"} <= set(backup.seen)
    assert_modes(files, 0o644, 0o755, run)
    assert_modes(backup.seen, 0o644, 0o755, run / "backup")

    sweep = tmp_path / "sweep"
    tune.run_sweep(QUICK, str(sweep), verbose=False)
    files = modes(sweep)
    assert {"sweep.json", "results.csv", "tuner/oracle.json"} <= set(files)
    assert_modes(files, 0o644, 0o755, sweep)


def test_atomic_writes_follow_another_umask(tmp_path, umask):
    umask(0o027)
    atomic.write_text(str(tmp_path / "a" / "results.csv"), "x\n")
    assert os.stat(tmp_path / "a" / "results.csv").st_mode & 0o777 == 0o640
    assert os.stat(tmp_path / "a").st_mode & 0o777 == 0o750


def test_the_docker_image_is_not_root_and_the_readme_mounts_the_data():
    """(No Docker here: what the image and the README's command say.)"""
    with open(os.path.join(ROOT, "Dockerfile")) as f:
        users = re.findall(r"^USER\s+(\S+)", f.read(), re.MULTILINE)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    [command] = re.findall(r"^docker run .*?[^\\]$", readme,
                           re.MULTILINE | re.DOTALL)
    mounted = re.findall(r"-v \"?[^:\s]+:([^:\s\"]+)", command)
    [data_dir] = re.findall(r"--data_dir=(\S+)", command)
    assert data_dir in mounted and "/app/data" in mounted
    assert '--user "$(id -u):$(id -g)"' in command
