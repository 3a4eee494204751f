"""User-facing errors.

A `UserError` is a mistake in what the user gave (a file, a key, a value): the CLI prints its
message on one line and exits non-zero, with no traceback. Anything else is a bug and keeps its
traceback.
"""


class UserError(Exception):
    """Bad input from the user; the message names the file or key and what was expected."""


class ConfigError(UserError, ValueError):
    """An unknown config key, a bad value, or a YAML file that cannot be read."""


def report_failures(failures, total: int, noun: str) -> int:
    """End of a batch command that carries on past bad inputs: list `failures` ((input, message)
    pairs) on stderr and return the exit code, 1 if any input failed, else 0."""
    import sys

    if not failures:
        return 0
    print(f"medvtc: {len(failures)} of {total} {noun}(s) failed:", file=sys.stderr)
    for item, msg in failures:
        print(f"  {item}: {msg}", file=sys.stderr)
    return 1
