"""`startup.py --before=DIR`: the first trial of a new graph, before and
after, with XLA's compilation cache cold and warm, in one run.

Each measurement is a fresh process (`startup.py --repo=... --json=...`,
the same trials), so each pays what a new process pays: imports, the
arrays read from disk, every step traced.  Per checkout, one cache folder
made for this run: the first process finds it empty (cold: every program
is compiled), the second finds what the first published (warm: the
programs load; tracing and the lowering to XLA remain).  The checkouts
alternate (before cold, after cold, before warm, after warm), so a machine
that slows down during the run does not favour one of them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

STARTUP = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                       "startup.py")
PHASES = ("data", "build", "fit_setup", "first_compile", "last_compile",
          "eval_compile", "startup", "train", "eval", "wall")


def measure(repo, cache, argv, out_dir, label) -> dict:
    """One process of startup.py measuring `repo`: its rows (trials)."""
    out = os.path.join(out_dir, f"{label}.json")
    env = {**os.environ, "BPFREE_XLA_CACHE": cache,
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    command = [sys.executable, STARTUP, f"--repo={repo}", f"--json={out}",
               "--sweep_trials=0", *argv]
    with open(os.path.join(out_dir, f"{label}.log"), "w") as log:
        done = subprocess.run(command, env=env, stdout=log,
                              stderr=subprocess.STDOUT)
    if done.returncode:
        with open(log.name) as f:
            sys.stdout.write(f.read()[-3000:])
        raise SystemExit(f"{label}: startup.py ended with status "
                         f"{done.returncode} (its output above)")
    with open(out) as f:
        return json.load(f)


def compare(before, after, argv) -> dict:
    """{(checkout, cache): rows} for before/after × cold/warm."""
    results = {}
    with tempfile.TemporaryDirectory(prefix="bpfree-startup-") as work:
        caches = {name: os.path.join(work, f"xla-{name}")
                  for name in ("before", "after")}
        for state in ("cold", "warm"):
            for name, repo in (("before", before), ("after", after)):
                print(f"measuring {name} ({repo}), XLA cache {state} ...",
                      flush=True)
                results[name, state] = measure(
                    repo, caches[name], argv, work, f"{name}-{state}")
    return results


def table(results) -> str:
    """The first trial of each measurement, and the second (its steps
    reused), phase by phase, with after/before ratios."""
    trials = min(len(rows) for rows in results.values())
    columns = [(state, trial) for state in ("cold", "warm")
               for trial in range(min(trials, 2))]
    head = (f"{'seconds':>14}" + "".join(
        f" {f'{state} #{trial + 1}':>22}" for state, trial in columns))
    sub = f"{'':>14}" + "".join(
        f" {'before':>7} {'after':>7} {'ratio':>6}" for _ in columns)
    lines = [head, sub]
    for phase in PHASES:
        cells = []
        for state, trial in columns:
            b = results["before", state][trial][phase]
            a = results["after", state][trial][phase]
            cells.append(f" {b:>7.2f} {a:>7.2f} {a / b if b else 0:>6.2f}")
        lines.append(f"{phase:>14}" + "".join(cells))
    if len(results["after", "cold"][0].get("epochs", ())) > 1:
        from startup import first_over_steady
        cells = []
        for state, trial in columns:
            b, a = (first_over_steady(results[name, state][trial])
                    for name in ("before", "after"))
            cells.append(f" {b:>7.2f} {a:>7.2f} {a / b:>6.2f}")
        lines.append(f"{'epoch 1/steady':>14}" + "".join(cells))
    return "\n".join(lines)


def main(before, after, argv) -> int:
    results = compare(before, after, argv)
    print(table(results))
    print("(#1: the process's first trial, a graph it has not traced; #2: "
          "the next trial of that graph, its compiled steps reused; "
          "ratio: after / before)")
    return 0
