"""benchmarks/accuracy.py's token section and every-rule table: the bars
are read off the runs' numbers, and a bar that fails says so."""

from __future__ import annotations

import argparse
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "benchmarks"))

import accuracy_report  # noqa: E402


def runs(accuracy):
    return [{"test_accuracy": accuracy, "train_seconds": 300.0}]


def token_results(vit_dfa):
    return {"vit_mnist": {"bp": runs(0.985), "dfa": runs(vit_dfa),
                          "shallow": runs(0.90),
                          "dfa, sublayer": runs(0.96)},
            "mixer_mnist": {"bp": runs(0.98), "dfa": runs(0.975),
                            "shallow": runs(0.93),
                            "dfa, sublayer": runs(0.96)}}


@pytest.mark.parametrize("vit_dfa,verdicts", [
    (0.975, ["met", "met", "met"]),
    (0.965, ["met", "**not met**", "met"]),  # 2 points below bp
    (0.925, ["met", "**not met**", "**not met**"]),  # 2.5 above shallow
])
def test_token_bars_follow_the_numbers(vit_dfa, verdicts):
    results = token_results(vit_dfa)
    [line] = accuracy_report.token_bars("vit_mnist", results["vit_mnist"])
    got = [part.rsplit(": ", 1)[1].rstrip(")") for part in line.split("; ")]
    assert got == verdicts, line
    assert f"dfa − bp = {100 * vit_dfa - 98.5:+.2f}" in line


def test_token_section_has_every_rule_and_the_sublayer_row():
    args = argparse.Namespace(token_epochs=10, token_seeds=1,
                              examples_frac=1.0)
    text = "\n".join(accuracy_report.tokens_section(
        args, token_results(0.975)))
    assert "| dfa, sublayer | 96.00 (5.0 min) | 96.00 (5.0 min) |" in text
    assert "--feedback_points" in text and "--arch=ARCH" in text
    assert "`mixer_mnist`: bp 98.00 ≥ 97: met" in text


def test_every_rule_table_has_a_column_per_rule_and_says_what_was_refused():
    """Issue 22's table: a row per setting, a column per rule; a refused
    combination is a dash with its line; the bars follow the numbers."""
    args = argparse.Namespace(rules=["bp", "usf", "fg_a", "pepita"])
    refusal = "--algorithm=pepita: '15C5v:bn' has a norm layer"
    results = {"dense": {"bp": runs(0.97), "usf": runs(0.95),
                         "fg_a": runs(0.79), "pepita": runs(0.85)},
               "fdfa_conv_mnist": {"bp": runs(0.98), "usf": runs(0.96),
                                   "fg_a": runs(0.9), "pepita": refusal}}
    text = "\n".join(accuracy_report.every_rule_section(args, results))
    assert "| setting | bp | usf | fg_a | pepita |" in text
    assert "| `dense` | 97.00 | 95.00 | 79.00 | 85.00 |" in text
    assert "| `fdfa_conv_mnist` | 98.00 | 96.00 | 90.00 | — |" in text
    assert f"- fdfa_conv_mnist, pepita: {refusal}" in text
    assert "- usf on `dense`: 95.00 ≥ 90: met" in text
    assert "- fg_a on `dense`: 79.00 ≥ 80: **not met**" in text
    assert "- pepita on `dense`: 85.00 ≥ 80: met" in text
