"""User-facing errors: the CLI prints their message and exits with code 2, no traceback."""


class MustError(Exception):
    """A problem with the user's input (recipe, data, model folder): the message names the file, key or row."""


class ConfigError(MustError):
    """A recipe that does not validate: unknown key, wrong type, missing value, bad stage wiring."""
