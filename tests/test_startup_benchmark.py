"""benchmarks/startup.py's comparison mode: what it passes to the processes
it starts, and how it summarises rounds."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "benchmarks"))
import startup  # noqa: E402
import startup_compare  # noqa: E402


def test_comparison_options_are_not_passed_to_the_measured_processes():
    """Each process gets its own --repo and --json: the caller's, in
    either spelling, would send both checkouts' rows to one file."""
    argv = ["--before", "/old", "--lrs=1e-3", "--json=/mine.json",
            "--repeats", "3", "--arch=256", "--repo=/new", "--epochs", "2"]
    assert startup.without_options(
        argv, ("--before", "--repo", "--repeats", "--json")) == [
            "--lrs=1e-3", "--arch=256", "--epochs", "2"]


def test_rounds_are_summarised_by_each_phase_median():
    def row(value, epochs):
        return {**{phase: value for phase in startup_compare.PHASES},
                "epochs": epochs}
    rounds = [[row(1.0, [3.0, 1.0]), row(0.1, [])],
              [row(5.0, [2.0, 1.2]), row(0.3, [])],
              [row(2.0, [9.0, 0.8])]]  # (a round with one trial only)
    first, = startup_compare.medians(rounds)
    assert first["startup"] == 2.0 and first["data"] == 2.0
    assert first["epochs"] == [3.0, 1.0]
