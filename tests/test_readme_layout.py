"""The README's Layout table is the tree: every module, script and entry
point outside tests/ has a row, and every file a row names exists."""

import os
import re
import subprocess

from conftest import ROOT


def layout_rows():
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    table = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    return [line for line in table.splitlines() if line.startswith("| `")]


def named_files(rows):
    """Every `name.ext` the rows name; benchmarks/ lists its files bare."""
    names = set()
    for row in rows:
        for name in re.findall(r"`([\w/.]+\.(?:py|sh|bash))`", row):
            folder = "benchmarks/" if row.startswith("| `benchmarks/`") \
                and "/" not in name else ""
            names.add(folder + name)
    return names


def tracked_files():
    listed = subprocess.run(["git", "ls-files", "*.py", "*.sh", "*.bash"],
                            cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout.split()
    return {f for f in listed if not f.startswith(("tests/", ".ci/"))
            and not f.endswith("__init__.py")}


def test_every_module_has_a_row_and_every_row_a_module():
    named = named_files(layout_rows())
    assert tracked_files() - named == set()  # modules without a row
    missing = {n for n in named if not os.path.exists(os.path.join(ROOT, n))}
    assert missing == set()  # rows naming files that are gone
