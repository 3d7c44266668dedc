"""`startup.py --before=DIR`: the first trial of a new graph, before and
after, with XLA's compilation cache cold and warm, in one run.

Each measurement is a fresh process (`startup.py --repo=... --json=...`,
the same trials), so each pays what a new process pays: imports, the
arrays read from disk, every step traced.  Per checkout, one cache folder
made for this run: the first process finds it empty (cold: every program
is compiled), the second finds what the first published (warm: the
programs load; tracing and the lowering to XLA remain).  The checkouts
alternate (before cold, after cold, before warm, after warm), so a machine
that slows down during the run does not favour one of them.  With
`--repeats=N`, N such rounds, each with cache folders of its own; the table
shows each phase's median over the rounds (a first trial's start-up varies
by a fifth from one process to the next on a 2-core machine).
"""

from __future__ import annotations

import json
import os
import statistics
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


def compare(before, after, argv, repeats=1) -> dict:
    """{(checkout, cache): [rows of each round]} for before/after ×
    cold/warm."""
    results = {}
    with tempfile.TemporaryDirectory(prefix="bpfree-startup-") as work:
        for round_ in range(repeats):
            caches = {name: os.path.join(work, f"xla-{name}-{round_}")
                      for name in ("before", "after")}
            for state in ("cold", "warm"):
                for name, repo in (("before", before), ("after", after)):
                    print(f"round {round_ + 1}/{repeats}: measuring {name} "
                          f"({repo}), XLA cache {state} ...", flush=True)
                    results.setdefault((name, state), []).append(measure(
                        repo, caches[name], argv, work,
                        f"{name}-{state}-{round_}"))
    return results


def medians(rounds) -> list:
    """Each trial's phases (and epochs), median over the rounds."""
    trials = min(len(rows) for rows in rounds)
    out = []
    for trial in range(trials):
        rows = [rows[trial] for rows in rounds]
        row = {phase: statistics.median(r[phase] for r in rows)
               for phase in PHASES}
        epochs = [r.get("epochs", []) for r in rows]
        row["epochs"] = [statistics.median(e) for e in zip(*epochs)]
        out.append(row)
    return out


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


def main(before, after, argv, repeats=1, json_path="") -> int:
    rounds = compare(before, after, argv, repeats)
    if json_path:
        with open(json_path, "w") as f:
            json.dump({f"{name}-{state}": rows
                       for (name, state), rows in rounds.items()}, f)
    results = {key: medians(rows) for key, rows in rounds.items()}
    print(table(results))
    if repeats > 1:
        print(f"(medians of {repeats} rounds)")
    print("(#1: the process's first trial, a graph it has not traced; #2: "
          "the next trial of that graph, its compiled steps reused; "
          "ratio: after / before)")
    return 0
