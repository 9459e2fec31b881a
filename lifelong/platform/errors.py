"""User-facing errors: each becomes one clear line on stderr and a non-zero exit."""


class LifelongError(Exception):
    """Base of the errors the CLI turns into one line and an exit code."""

    exit_code = 1


class ConfigError(LifelongError):
    """The config (file, override, strategy or stream name) is wrong; nothing has run."""

    exit_code = 2


class DataError(LifelongError):
    """A data file is missing, corrupt or truncated."""

    exit_code = 3


class UnsupportedError(ConfigError):
    """A combination (strategy x engine x ZeRO stage) the platform cannot run correctly."""
