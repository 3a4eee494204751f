"""User-facing errors.

A `UserError` is a mistake in what the user gave (a file, a key, a value): the CLI prints its
message on one line and exits non-zero, with no traceback. Anything else is a bug and keeps its
traceback.
"""


class UserError(Exception):
    """Bad input from the user; the message names the file or key and what was expected."""


class ConfigError(UserError, ValueError):
    """An unknown config key, a bad value, or a YAML file that cannot be read."""
