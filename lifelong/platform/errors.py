"""User-facing errors: each becomes one clear line on stderr and a non-zero exit."""


def first_line(err: BaseException, last: bool = False) -> str:
    """One line of an exception's message (the first, or the last), for one-line errors."""
    lines = str(err).strip().splitlines() or [type(err).__name__]
    return lines[-1] if last else lines[0]


class LifelongError(Exception):
    """Base of the errors the CLI turns into one line and an exit code."""

    exit_code = 1


class ConfigError(LifelongError):
    """The config (file, override, strategy or stream name) is wrong; nothing has run."""

    exit_code = 2


class DataError(LifelongError):
    """A data file is missing, corrupt or truncated."""

    exit_code = 3


def require(ok: bool, key: str, problem: str) -> None:
    """``ConfigError("key: problem")`` unless ``ok``: the one shape of a value check."""
    if not ok:
        raise ConfigError(f"{key}: {problem}")


class UnsupportedError(ConfigError):
    """A combination (strategy x engine x ZeRO stage) the platform cannot run correctly."""


class TrackingError(LifelongError):
    """The MLflow store or server cannot be used at all (checked before any compute)."""

    exit_code = 4


class TrainingError(LifelongError):
    """Training failed on a worker (diverged, crashed); what was logged so far is kept."""


class SubmitError(LifelongError):
    """The Ray cluster cannot take the job (unreachable, refused the token, lost the log
    stream); nothing ran, or the job's state is unknown."""

    exit_code = 5


class CheckpointError(LifelongError):
    """A checkpoint cannot be read, or belongs to another experiment; nothing was changed."""

    exit_code = 3
