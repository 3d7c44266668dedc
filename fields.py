"""A setting of the framework (`Field`): its type, default, help, choices and
grid, and how a value of it is parsed and checked, on the command line and
as hparams.py declares it.  hparams.py holds the fields themselves."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import arch
from runtime.errors import UsageError


@dataclasses.dataclass(frozen=True)
class Field:
    """One setting: its type, default, help, valid choices and sweep grid."""

    name: str
    type: type
    default: Any
    help: str
    choices: tuple | None = None
    grid: tuple | None = None  # values a sweep searches when not pinned
    check: Callable[[Any], str | None] | None = None  # returns a problem
    # A set of choices (repeatable flag, or commas): always one pinned value,
    # the chosen names joined by commas; never a sweep grid.
    multiple: bool = False
    # Says where things are (a folder), not what is run: not part of a
    # sweep's identity, so the same sweep continues on a machine that mounts
    # the data elsewhere, or with $BPFREE_DATA_DIR in place of the flag.
    location: bool = False
    default_text: str | None = None  # the default as --help says it
    every: tuple | None = None  # what `all` names, when not every choice

    def parse_one(self, text: str) -> Any:
        text = text.strip()
        if self.type is bool:
            low = text.lower()
            if low in ("true", "1", "yes"):
                return True
            if low in ("false", "0", "no"):
                return False
            raise UsageError(f"--{self.name}: '{text}' is not a boolean "
                             "(valid: true, false)")
        try:
            value = self.type(text)
        except ValueError:
            raise UsageError(f"--{self.name}: '{text}' is not a valid "
                             f"{self.type.__name__}") from None
        self.validate(value)
        return value

    def parse_set(self, text: str) -> str:
        """A multiple field's names (commas, `all`, `none`) as its value:
        the chosen choices joined by commas, in the order of `choices`."""
        names = {t.strip() for t in str(text).split(",") if t.strip()}
        if "all" in names:
            return ",".join(self.choices)
        names.discard("none")
        for name in sorted(names):
            if name not in self.choices:
                raise UsageError(
                    f"unknown {self.name} '{name}' (valid: "
                    f"{', '.join(self.choices)}, all, none)")
        return ",".join(c for c in self.choices if c in names)

    def validate(self, value: Any) -> None:
        if self.multiple:
            self.parse_set(value)
            return
        if self.choices is not None and value not in self.choices:
            raise UsageError(f"unknown {self.name} '{value}' "
                             f"(valid: {', '.join(map(str, self.choices))})")
        if self.type is float and not math.isfinite(value):
            # (1e400 parses as inf; nan compares false with every bound)
            raise UsageError(f"--{self.name}={value}: must be a finite "
                             "number")
        problem = self.check(value) if self.check else None
        if problem:
            raise UsageError(f"--{self.name}={value}: {problem}")

    def declaration_problem(self) -> str | None:
        """What is wrong with this field as hparams.py declares it (its
        default and its grid, checked as command-line values are), or
        None.  A grid value of another type would reach keras-tuner, whose
        Choice refuses mixed types only once a sweep runs, in 30 lines."""
        values = [("default", self.default)]
        if self.grid is not None:
            if self.multiple:
                return (f"{self.name} is a set of choices, never searched: "
                        "remove its grid=")
            if not self.grid:
                return (f"{self.name}'s grid is empty (give one value or "
                        "more, or remove grid= to use the default)")
            values += [("grid", v) for v in self.grid]
        for where, value in values:
            problem = self._value_problem(value)
            if problem:
                return f"{self.name}'s {where} holds {value!r}: {problem}"
        for value in dict.fromkeys(self.grid or ()):
            if list(self.grid).count(value) > 1:
                return (f"{self.name}'s grid holds {value!r} twice (give "
                        "each value once)")
        return None

    def _value_problem(self, value) -> str | None:
        # bool is an int in Python, not here; an int in a float grid would
        # be a second type (and 1 and 1.0 two sweeps): write 1.0.
        if isinstance(value, bool) != (self.type is bool) or \
                not isinstance(value, self.type):
            kind = type(value).__name__
            return (f"{'an' if kind[0] in 'aeiou' else 'a'} {kind}, but "
                    f"{self.name} takes {self.type.__name__} values"
                    f"{_spelling_hint(value, self.type)}")
        return refusal(self.validate, value)

    def parse(self, text: str) -> tuple:
        """Parses a flag's text into the tuple of values it names."""
        if self.multiple:
            return (self.parse_set(text),)
        if text.strip().lower() == "all":
            if self.choices is None and self.type is not bool:
                raise UsageError(f"--{self.name}=all: this field has no list "
                                 "of choices; give values separated by commas")
            return ((False, True) if self.type is bool
                    else tuple(self.every or self.choices))
        values = tuple(self.parse_one(t) for t in text.split(",") if t.strip())
        if not values:
            raise UsageError(f"--{self.name}: no value given")
        return values


# Checks of a value: each returns what is wrong with it, or None.


def positive(value) -> str | None:
    return None if value > 0 else "must be positive"


def non_negative(value) -> str | None:
    return None if value >= 0 else "must be zero or positive"


def fraction(value) -> str | None:
    return None if 0 < value <= 1 else "must be in (0, 1]"


def below_one(value) -> str | None:
    return None if 0 <= value < 1 else "must be in [0, 1)"


def at_least_one(value) -> str | None:
    return None if value >= 1 else "must be at least 1"


SEED_LIMIT = 2 ** 32  # numpy's and Keras' seeds are 32-bit


def seed_in_range(value) -> str | None:
    return None if 0 <= value < SEED_LIMIT else \
        f"must be in [0, {SEED_LIMIT - 1}]"


def arch_string(value) -> str | None:
    return refusal(arch.parse, value)


def refusal(check: Callable[[Any], Any], value) -> str | None:
    """The line `check(value)` refuses `value` with, or None."""
    try:
        check(value)
    except UsageError as error:
        return str(error)
    return None


def _spelling_hint(value, wanted: type) -> str:
    """' (write 0.1)' where `value` spells a value of the `wanted` type."""
    if wanted in (float, int) and not isinstance(value, bool):
        try:
            spelt = wanted(value)
        except (TypeError, ValueError):
            return ""
        if isinstance(value, str) or spelt == value:
            return f" (write {spelt!r})"
    return ""


def value_text(value) -> str:
    """A setting's value as people write it (1e-10, 0.001, True)."""
    return f"{value:g}" if isinstance(value, float) else str(value)
