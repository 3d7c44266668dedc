"""The framework's error types, below every other module.

A `UsageError` is bad input: its message is the one line the user sees
(`error: ...`, exit status 2), and a sweep never retries it.
"""


class UsageError(ValueError):
    """A bad setting: its message is the one line shown to the user."""


class DataError(UsageError):
    """A dataset that cannot be read: missing or malformed files."""
