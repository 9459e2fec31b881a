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


def unwrap_worker_error(err: BaseException) -> LifelongError:
    """Turn Ray Train's wrapped worker failure into our own error, one line long.

    Ray wraps a worker's exception (``WorkerGroupError.worker_failures`` holds
    RayTaskErrors); the user should see the cause, not the wrapping."""
    failures = getattr(err, "worker_failures", None) or {0: err}
    for rank, failure in sorted(failures.items()):
        seen: set[int] = set()
        node: BaseException | None = failure
        while node is not None and id(node) not in seen:
            seen.add(id(node))
            if isinstance(node, LifelongError):
                return node
            node = getattr(node, "cause", None) or node.__cause__
    rank, failure = sorted(failures.items())[0]
    return TrainingError(f"training failed on worker rank {rank}: "
                         f"{first_line(failure, last=True)[:300]} (traceback above)")


class SubmitError(LifelongError):
    """The Ray cluster cannot take the job (unreachable, refused the token, lost the log
    stream); nothing ran, or the job's state is unknown."""

    exit_code = 5


class CheckpointError(LifelongError):
    """A checkpoint cannot be read, or belongs to another experiment; nothing was changed."""

    exit_code = 3
