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
# of this test session, not in the user's cache.
if "BPFREE_XLA_CACHE" not in os.environ:
    import tempfile
    os.environ["BPFREE_XLA_CACHE"] = tempfile.mkdtemp(prefix="bpfree-xla-")


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


@pytest.fixture(autouse=True)
def no_steps_kept_from_another_test():
    """Each test starts with no compiled steps kept (step_cache.py): a test
    that patches the model's code must trace it, whatever ran before in
    this process."""
    from runtime import step_cache
    step_cache.clear()
    yield
    step_cache.clear()
