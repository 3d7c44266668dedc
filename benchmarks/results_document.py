"""docs/RESULTS.md as a whole: a header, the section of each part that
ran now (accuracy_report.py writes them), and the other sections kept
from the old report with the line saying when they were produced."""

from __future__ import annotations

import datetime
import os

from accuracy_report import (CONV_TITLE, EVERY_RULE_TITLE, FA_TITLE,
                             FDFA_CONV_TITLE, FDFA_TITLE, RULES_TITLE,
                             SECTION_ORDER, TOKENS_TITLE, command_line,
                             conv_section, every_rule_section, fa_section,
                             fdfa_conv_section, fdfa_section, rules_section,
                             tokens_section)


def training_minutes(name, part) -> float:
    """Minutes of training summed over one part's runs."""
    if name == "fa":
        runs = list(part)
    elif name in ("rules", "conv", "tokens", "every_rule"):
        runs = [m for rules in part.values() for per_seed in rules.values()
                if not isinstance(per_seed, str) for m in per_seed]
    else:  # fdfa, fdfa_conv: {rule: [metrics per seed]}
        runs = [m for per_seed in part.values() for m in per_seed]
    return sum(m.get("train_seconds", 0) for m in runs) / 60


def report(args, argv, parts, seconds, old=""):
    """The whole report: a header, then one section per part.  A part this
    invocation did not run (its seeds set to 0) keeps its section from the
    `old` report, with the line saying when and how it was produced."""
    import tensorflow as tf

    def stamp(name):
        return (f"Produced {datetime.date.today().isoformat()} by "
                f"`{command_line(argv)}` (TensorFlow {tf.__version__}, "
                f"{os.cpu_count()} CPU cores"
                f"{', GPU' if tf.config.list_physical_devices('GPU') else ''}"
                "; XLA on, 8 steps per execution); its runs trained for "
                f"{training_minutes(name, parts[name]):.0f} min in all "
                f"(the invocation took {seconds / 60:.0f} min, reusing "
                "the runs it found finished).")
    new = {}
    if parts.get("fdfa"):
        new[FDFA_TITLE] = fdfa_section(args, parts["fdfa"])
    if parts.get("fdfa_conv"):
        new[FDFA_CONV_TITLE] = fdfa_conv_section(args, parts["fdfa_conv"])
    if parts.get("fa"):
        new[FA_TITLE] = fa_section(args, parts["fa"])
    if parts.get("rules"):
        new[RULES_TITLE] = rules_section(args, parts["rules"])
        if "kp" in args.rules:
            new[RULES_TITLE] += [
                "", "kp runs without weight decay here, like every rule: B "
                "receives W's updates, so B − W keeps its initial value "
                "(Akrout et al. need decay for W and B to converge)."]
    if parts.get("conv"):
        new[CONV_TITLE] = conv_section(args, parts["conv"])
    if parts.get("tokens"):
        new[TOKENS_TITLE] = tokens_section(args, parts["tokens"])
    if parts.get("every_rule"):
        new[EVERY_RULE_TITLE] = every_rule_section(args,
                                                   parts["every_rule"])
    part_of = {FDFA_TITLE: "fdfa", FDFA_CONV_TITLE: "fdfa_conv",
               FA_TITLE: "fa", RULES_TITLE: "rules", CONV_TITLE: "conv",
               TOKENS_TITLE: "tokens", EVERY_RULE_TITLE: "every_rule"}
    sections = sections_of(old)
    for title, lines in new.items():
        sections[title] = [title, "", stamp(part_of[title]), "", *lines[2:]]
    lines = ["# Results", "",
             "Written by `benchmarks/accuracy.py`; runs already finished in "
             "its work folder are reused, and each section says when and by "
             "which command it was produced.", ""]
    for title in [t for t in SECTION_ORDER if t in sections] + [
            t for t in sections if t not in SECTION_ORDER]:
        lines += [*sections[title], ""]
    return "\n".join(lines).rstrip() + "\n"


def sections_of(text: str) -> dict:
    """{'## title': its lines} of a report (blank lines at the end cut)."""
    sections, current = {}, None
    for line in text.splitlines():
        if line.startswith("## "):
            current = sections.setdefault(line, [line])
        elif current is not None:
            current.append(line)
    for lines in sections.values():
        while lines and not lines[-1].strip():
            lines.pop()
    return sections
