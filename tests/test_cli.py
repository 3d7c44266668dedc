"""Bad input: one line naming the problem (and the valid choices), exit
status 2, no traceback, nothing written; on train.py and tune.py (what
train.bash runs) alike, and on report.py.  A single run that diverges is
not bad input: one line, exit status 3, its files kept."""

import gzip
import os
import pickle
import shutil
import subprocess
import sys

import numpy as np
import pytest

import cli
import hparams
import report
from runtime import folders
import sweep_plan
import train
import tune
from bad_inputs import BAD_INPUTS
from conftest import ROOT, SHARED_DATA, refused

FMNIST = os.path.join(SHARED_DATA, "fashion-mnist")


@pytest.fixture(scope="module")
def bad_data(tmp_path_factory):
    """Folders of damaged data files, one kind of damage each."""
    root = tmp_path_factory.mktemp("bad_data")

    def folder(*parts):
        path = root.joinpath(*parts)
        path.mkdir(parents=True)
        return path
    images = np.zeros((4, 28, 28), np.uint8)
    labels = np.arange(4, dtype=np.uint8)
    np.savez(folder("whole") / "mnist.npz", x_train=images, y_train=labels,
             x_test=images, y_test=labels)
    whole = (root / "whole" / "mnist.npz").read_bytes()
    (folder("cut_npz") / "mnist.npz").write_bytes(whole[:len(whole) // 2])
    (folder("text_npz") / "mnist.npz").write_text("x_train,y_train\n1,2\n")
    np.savez(folder("no_x_train") / "mnist.npz", y_train=labels,
             x_test=images, y_test=labels)
    np.savez(folder("mismatched") / "mnist.npz", y_train=labels,
             x_train=np.zeros((5, 28, 28), np.uint8), x_test=images,
             y_test=labels)

    def idx(array):
        """An IDX file's bytes (uint8)."""
        dims = b"".join(d.to_bytes(4, "big") for d in array.shape)
        return b"\0\0\x08" + bytes([array.ndim]) + dims + array.tobytes()

    def fmnist(name, **damaged):
        """fashion-mnist/ with links to the shared files, but `damaged`
        ({file: bytes, or None for absent})."""
        sub = folder(name, "fashion-mnist")
        for file in tune_fmnist_files():
            if file in damaged:
                if damaged[file] is not None:
                    (sub / file).write_bytes(damaged[file])
            else:
                os.symlink(os.path.join(FMNIST, file), sub / file)
    noise = np.random.default_rng(0).integers(0, 256, (100, 28, 28),
                                              dtype=np.uint8)
    packed = gzip.compress(idx(noise))
    fmnist("cut_gz", **{"train-images-idx3-ubyte.gz":
                        packed[:len(packed) // 2]})
    fmnist("raw", **{"train-labels-idx1-ubyte.gz": idx(labels)})
    fmnist("cut_idx", **{"t10k-labels-idx1-ubyte.gz": gzip.compress(
        idx(np.zeros(10000, np.uint8))[:-1])})
    fmnist("three_of_four", **{"t10k-labels-idx1-ubyte.gz": None})

    batch = pickle.dumps({b"data": np.zeros((4, 3072), np.uint8),
                          b"labels": [0, 1, 2, 3]})
    cut = folder("cut_pickle", "cifar-10-batches-py")
    no_labels = folder("no_labels", "cifar-10-batches-py")
    for name in [f"data_batch_{i}" for i in range(1, 6)]:
        (cut / name).write_bytes(batch[:len(batch) // 2])
        (no_labels / name).write_bytes(batch)
    (cut / "test_batch").write_bytes(batch)
    (no_labels / "test_batch").write_bytes(pickle.dumps(
        {b"data": np.zeros((4, 3072), np.uint8)}))
    (folder("bad_tar") / "cifar-100-python.tar.gz").write_bytes(
        gzip.compress(b"not a tar archive")[:30])
    return root


def tune_fmnist_files():
    import datasets
    return datasets.FMNIST_FILES


@pytest.mark.parametrize("case", BAD_INPUTS)
@pytest.mark.parametrize("entry", ["train", "tune"])
def test_bad_input_is_one_line_and_writes_nothing(case, entry, tmp_path,
                                                  capsys, bad_data):
    args, expected = BAD_INPUTS[case]
    if entry == "tune" and case == "list in a single run":
        pytest.skip("a sweep takes lists")
    if "{data}" in " ".join(args) and not os.path.isdir(FMNIST):
        pytest.skip("no shared data")
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "out"
    args = [a.format(empty=empty, data=bad_data) for a in args]
    if entry == "train":
        status = cli.run(["train.py", *args, f"--workdir={out}"], train.main,
                         train.FLAGS)
    else:
        status = cli.run(["tune.py", *args, f"--sweep_dir={out}"], tune.main,
                         tune.FLAGS)
    assert expected in refused(capsys, status, out)


def test_every_case_is_distinct_and_there_are_forty():
    from test_report import REPORT_BAD_INPUTS
    assert len(BAD_INPUTS) + len(REPORT_BAD_INPUTS) >= 40
    assert len({tuple(args) for args, _ in BAD_INPUTS.values()}) == len(
        BAD_INPUTS)


@pytest.fixture(scope="module")
def small_sweep(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("report") / "exp")
    tune.run_sweep({"dataset": ("digits",), "arch": ("8",), "epochs": (1,),
                    "objective": ("loss",), "use_xla": (False,),
                    "batch_norm": (False,), "algorithm": ("dfa",),
                    "lr": (1e-2,)}, path,
                   verbose=False)
    return path


# --- A run that fails ---------------------------------------------------------


def test_diverged_single_run_says_so_and_exits_3(tmp_path, capsys):
    out = tmp_path / "run"
    status = cli.run(["train.py", "--dataset=digits", "--algorithm=bp",
                      "--activation=relu", "--optimizer=sgd", "--lr=1e10",
                      "--arch=16", "--epochs=2", "--use_xla=false",
                      f"--workdir={out}"], train.main, train.FLAGS)
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert status == 3
    assert err == [f"error: {out}: the run diverged: training loss became nan "
                   "in epoch 1 (TerminateOnNaN stopped it); its files are "
                   "kept (try a lower --lr)"]
    metrics = folders.read_json(str(out / "metrics.json"))
    assert metrics["diverged"] is True and metrics["epochs_run"] == 1
    assert os.path.exists(out / "history.csv")


@pytest.mark.slow
def test_real_command_prints_one_line(tmp_path):
    """The same through a real process: nothing else reaches stderr."""
    result = subprocess.run(
        [sys.executable, "train.py", "--dataset=digits", "--arch=256-abc",
         f"--workdir={tmp_path / 'out'}"], cwd=ROOT, capture_output=True,
        text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: --arch=256-abc: unknown arch token 'abc' in '256-abc' "
        "(valid tokens: N (dense), NCk[sS][v|pP] (conv), RN[sS] (residual "
        "unit), Pk[sS] (max pool), Ak[sS] (average pool), G (global "
        "average pool), EdpP (patch embedding), TH[rR] (transformer "
        "block), MScC (mixer block), Hm/Hc/Hf (token head); X+ before a "
        "token opens its block with pool X; options :bn :nobn :bias "
        ":nobias :dRATE :ln :cls; presets fdfa_conv_mnist, "
        "fdfa_conv_cifar10, dkp_cifar10, alexnet_cifar100, resnet20, "
        "resnet56, lenet5, vit_mnist, mixer_mnist, vit_cifar10)"]
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(not os.path.exists(os.path.join(ROOT, ".venv")),
                    reason="train.bash needs the project's .venv")
@pytest.mark.slow
def test_train_bash_refuses_a_damaged_file_once(tmp_path, bad_data):
    """Through train.bash: one line on stderr (TensorFlow, which the sweep
    imports to check its grid, prints nothing), exit 2, no restart."""
    sweep = tmp_path / "exp"
    env = {k: v for k, v in os.environ.items()
           if k not in ("BPFREE_VERBOSE", "TF_CPP_MIN_LOG_LEVEL")}
    result = subprocess.run(
        [os.path.join(ROOT, "train.bash"), str(sweep), "--dataset=mnist",
         f"--data_dir={bad_data / 'cut_npz'}"], capture_output=True,
        text=True, timeout=300, env=env)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"error: mnist: data file '{bad_data / 'cut_npz' / 'mnist.npz'}' is "
        "unusable (not a complete .npz archive of arrays (BadZipFile)); "
        "replace it with the original file"]
    assert result.stdout == ""
    assert not sweep.exists()


NO_TENSORFLOW = """
import sys
sys.path.insert(0, {root!r})
import cli, train, tune
entry = sys.argv[1]
main, flags = ((train.main, train.FLAGS) if entry == "train.py"
               else (tune.main, tune.FLAGS))
status = cli.run([entry, *sys.argv[2:]], main, flags)
print(status, "tensorflow" in sys.modules)
"""


@pytest.mark.slow
def test_refusals_that_need_no_tensorflow_come_before_it(small_sweep,
                                                          tmp_path):
    """A finished --workdir, a sweep folder in use and a sweep rerun with a
    changed setting are refused before TensorFlow is imported (at once,
    not after its 5 s import and the data)."""
    from runtime import sweep_lock
    finished = tmp_path / "finished"
    finished.mkdir()
    (finished / "metrics.json").write_text("{}")
    held = tmp_path / "held"
    lock = sweep_lock.hold_sweep(str(held))
    sweep = str(tmp_path / "sweep")
    shutil.copytree(small_sweep, sweep)
    same = ["--dataset=digits", "--arch=8", "--objective=loss",
            "--use_xla=false", "--batch_norm=false", "--algorithm=dfa",
            "--lr=1e-2"]
    cases = {
        "finished": (["train.py", f"--workdir={finished}"],
                     "already holds a finished run"),
        "in use": (["tune.py", f"--sweep_dir={held}"],
                   "is in use by another sweep (pid "),
        "changed": (["tune.py", f"--sweep_dir={sweep}", *same, "--epochs=2"],
                    "holds another sweep (epochs was 1, now 2)"),
    }
    try:
        for case, (args, words) in cases.items():
            result = subprocess.run(
                [sys.executable, "-c", NO_TENSORFLOW.format(root=ROOT),
                 *args], capture_output=True, text=True, timeout=120)
            assert result.stdout.split() == ["2", "False"], (case, result)
            err = result.stderr.splitlines()
            assert len(err) == 1 and words in err[0], (case, err)
    finally:
        lock.release()


def test_help_texts_end_cleanly_and_agree_with_the_readme():
    """--tracker's help is ours alone (absl appended ';' and a line of its
    own); --augment's keys are the README's."""
    flag_values = cli.make_flags({})
    assert flag_values["tracker"].help.endswith("Default: none.")
    augment = " ".join(flag_values["augment"].help.split())
    assert "keyed by (seed, epoch, batch)" in augment
    with open(os.path.join(ROOT, "README.md")) as f:
        assert "Draws are keyed by (seed, epoch, batch)" in " ".join(
            f.read().split())


