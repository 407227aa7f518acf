"""Errors a user can fix; the CLI prints them as one line and exits 1.

Anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A mistake in input the user controls: a spec, a flag, a URL, a missing file."""


class SpecError(UserError):
    """A study spec or exported config is invalid; the message starts with `file: field.path:`."""


class DataError(UserError):
    """A data set cannot be loaded; the message says which file to place where."""


class StorageError(UserError):
    """The study storage cannot be reached or does not hold what was asked for."""
