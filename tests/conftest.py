import json
import os
import re
import shutil
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

SHARED_DATA = os.path.join(ROOT, "..", "shared", "data")

# Subprocesses keep their XLA compilation cache (xla_cache.py) in a folder
# of this test session, not in the user's cache; the process that made the
# folder (pytest's, whose xdist workers inherit it) removes it at exit.
if "BPFREE_XLA_CACHE" not in os.environ:
    import atexit
    import tempfile
    os.environ["BPFREE_XLA_CACHE"] = tempfile.mkdtemp(prefix="bpfree-xla-")
    atexit.register(shutil.rmtree, os.environ["BPFREE_XLA_CACHE"],
                    ignore_errors=True)


import pytest  # noqa: E402


def repo_copy(tmp_path):
    """This repository's code, copied (its .venv linked), to edit."""
    copy = tmp_path / "bpfree"
    copy.mkdir()
    for name in os.listdir(ROOT):
        path = os.path.join(ROOT, name)
        if name.endswith(".py") or name in ("train.bash", "Pipfile.lock"):
            shutil.copy2(path, copy / name)
        elif name in ("scripts", "runtime"):
            shutil.copytree(path, copy / name,
                            ignore=shutil.ignore_patterns("__pycache__"))
    os.symlink(os.path.join(ROOT, ".venv"), copy / ".venv")
    return copy


def edit_grid(copy, name, grid):
    """Writes `grid` (source text) as field `name`'s grid in the copy's
    hparams.py."""
    path = copy / "hparams.py"
    text = path.read_text()
    start = text.index(f'Field("{name}"')
    found = re.compile(r"grid=\((?:[^()]|\([^()]*\))*\)").search(text, start)
    path.write_text(text[:found.start()] + f"grid={grid}" +
                    text[found.end():])


def refused(capsys, status, out):
    """Exit 2, one line `error: ...` (returned), no traceback, `out` not
    created."""
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert status == 2, captured.err
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert "Traceback" not in captured.out + captured.err
    assert not os.path.exists(out)
    return err[0]


@pytest.fixture(autouse=True)
def no_steps_kept_from_another_test():
    """Each test starts with no compiled steps kept (step_cache.py): a test
    that patches the model's code must trace it, whatever ran before in
    this process."""
    from runtime import step_cache
    step_cache.clear()
    yield
    step_cache.clear()


# --- Small sweeps the report's tests read (tests/test_report*.py) -----------

REPORT_GIVEN = {"dataset": ("digits",), "arch": ("8",), "epochs": (2,),
                "objective": ("loss",), "use_xla": (False,),
                "batch_norm": (False,), "algorithm": ("dfa", "bp"),
                "lr": (1e-2,), "executions_per_trial": (2,)}
REPORT_TRACKED = {**REPORT_GIVEN, "executions_per_trial": (1,),
                  "epochs": (1,),
                  "tracker": ("bp_cosine,weight_alignment",),
                  "tracker_every": (5,)}
REPORT_ONE_RULE = {**REPORT_GIVEN, "algorithm": ("dfa",), "epochs": (1,),
                   "lr": (1e-2, 3e-2), "executions_per_trial": (1,),
                   "objective": ("val_loss",)}


def sweep_of(tmp_path_factory, name, given) -> str:
    import tune
    path = str(tmp_path_factory.mktemp("report") / name)
    tune.run_sweep(given, path, verbose=False)
    return path


@pytest.fixture(scope="session")
def report_sweep(tmp_path_factory):
    """Two rules, two executions each, two epochs."""
    return sweep_of(tmp_path_factory, "exp", REPORT_GIVEN)


@pytest.fixture(scope="session")
def tracked_sweep(tmp_path_factory):
    """A sweep of one execution per configuration, with trackers."""
    return sweep_of(tmp_path_factory, "tracked", REPORT_TRACKED)


@pytest.fixture(scope="session")
def one_rule_sweep(tmp_path_factory):
    """One rule, one epoch, a searched setting (lr), a validation split
    (the objective is on it)."""
    return sweep_of(tmp_path_factory, "one_rule", REPORT_ONE_RULE)


def with_compile_seconds(source, target, seconds) -> str:
    """A copy of a sweep whose runs recorded compile_seconds (`seconds`:
    execution -> value; None: recorded nothing, as before it existed)."""
    shutil.copytree(source, target)
    import sweep_results
    runs = sweep_results.results_table(target)
    for trial, execution in zip(runs["trial_id"], runs["execution"]):
        path = os.path.join(target, "trials", trial, f"exec{execution}",
                            "metrics.json")
        with open(path) as f:
            metrics = json.load(f)
        metrics.pop("compile_seconds", None)
        if seconds is not None:
            metrics["compile_seconds"] = seconds[execution]
        with open(path, "w") as f:
            json.dump(metrics, f)
    return target


@pytest.fixture(scope="session")
def timed_sweep(report_sweep, tmp_path_factory):
    """The sweep of two executions per configuration, as if its runs had
    recorded compile_seconds."""
    return with_compile_seconds(
        report_sweep, str(tmp_path_factory.mktemp("report") / "timed"),
        {0: 3.0, 1: 2.0})


@pytest.fixture(scope="session")
def untimed_sweep(report_sweep, tmp_path_factory):
    """The same sweep as if made before compile_seconds existed."""
    return with_compile_seconds(
        report_sweep, str(tmp_path_factory.mktemp("report") / "untimed"),
        None)
