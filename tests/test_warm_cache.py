"""A warm XLA cache is as quiet as a cold one: the quickstart sweep, run
twice through train.bash with the cache on (and XLA on: the defaults),
prints no TensorFlow C++ line either time, though the second run loads
every step it runs from the cache (stderr_filter.py, xla_cache.py)."""

import os
import subprocess

import pytest

from runtime import quiet
from runtime import stderr_filter
from runtime import xla_cache
from conftest import ROOT
from test_quiet import CPP_LOG

# Starts processes, kills them or fills disks (-m "not slow" leaves it out).
pytestmark = pytest.mark.slow


def quickstart(sweep_dir, cache):
    """The README's first command, in a user's environment (none of the
    test session's settings of TensorFlow's or bpfree's logging)."""
    env = {k: v for k, v in os.environ.items()
           if k not in (quiet.VERBOSE_ENV, "TF_CPP_MIN_LOG_LEVEL",
                        "TF_XLA_FLAGS", stderr_filter.ENV)}
    env[xla_cache.ENV] = str(cache)
    result = subprocess.run(
        [os.path.join(ROOT, "train.bash"), str(sweep_dir),
         "--dataset=digits", "--algorithm=dfa"],
        capture_output=True, text=True, timeout=900, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return (result.stdout + result.stderr).splitlines()


def published(cache):
    [shared] = os.listdir(cache)  # (this TensorFlow, this CPU)
    return sorted(os.path.basename(p) for p in xla_cache.entries(
        os.path.join(cache, shared)))


@pytest.mark.skipif(not os.path.exists(os.path.join(ROOT, ".venv")),
                    reason="train.bash needs the project's .venv")
def test_a_sweep_run_again_loads_its_steps_and_prints_nothing_more(
        tmp_path):
    cache = tmp_path / "xla"
    cold = quickstart(tmp_path / "a", cache)
    compiled = published(cache)
    assert compiled
    warm = quickstart(tmp_path / "b", cache)
    assert published(cache) == compiled  # every step loaded, none compiled
    for lines in (cold, warm):
        assert [line for line in lines if CPP_LOG.match(line)] == []
    assert len(warm) <= len(cold) + 1
