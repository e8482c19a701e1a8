"""User-facing errors: the CLI prints their message and exits with code 2, no traceback."""


class MustError(Exception):
    """A problem with the user's input (recipe, data, model folder): the message names the file, key or row."""

    exit_code = 2
    """What ``must`` exits with after printing the message."""


class ConfigError(MustError):
    """A recipe that does not validate: unknown key, wrong type, missing value, bad stage wiring."""


class RunInterrupted(MustError):
    """Ctrl-C stopped a stage (its record and checkpoint say where); exit 130 = 128 + SIGINT, as a shell reports it."""

    exit_code = 130
