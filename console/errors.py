"""User-facing failures: the CLI prints their message without a traceback."""


class RedlineError(Exception):
    """A failure the operator can act on; the message says what and how to fix it."""

    exit_code = 1


class UsageError(RedlineError):
    """Bad input from the operator (a flag, a file); exit code 2."""

    exit_code = 2


class ConfigError(UsageError):
    """A configuration file field that does not hold what it must."""

    def __init__(self, path, field: str, expected: str, got=None):
        self.path, self.field, self.expected, self.got = str(path), field, expected, got
        detail = f"{self.path}: field '{field}': expected {expected}"
        if got is not None:
            detail += f", got {got!r}"
        super().__init__(detail)
