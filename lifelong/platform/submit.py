"""``lifelong submit``: run one experiment as a Ray job on a running cluster.

The job's entrypoint is the same ``lifelong run CONFIG key=value ...`` a laptop runs, in
Ray's copy of this checkout (``working_dir``), so the cluster runs exactly this code and
these configs. Everything that can be checked here is checked before the cluster is
contacted: a bad config costs no upload and no cluster time.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, TextIO
from urllib.parse import urlsplit

from lifelong.platform.config import RunConfig, load_config
from lifelong.platform.errors import SubmitError, first_line
from lifelong.platform.preflight import check_supported
from lifelong.platform.tracking import default_artifact_location, resolve_uri

# Never uploaded: the environment, history, local stores and caches (Ray also skips
# what .gitignore lists; these hold even outside a git checkout).
EXCLUDES = [".venv", ".git", "mlruns.db", "mlruns", "mlartifacts", ".lifelong", "__pycache__"]
PASS_THROUGH = ("LIFELONG_DATA",)  # set here, wanted by the job too
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


def submit(config_path: str, overrides: Sequence[str], address: str, follow: bool = True,
           out: Optional[TextIO] = None) -> str:
    """Validate, submit, and (``follow``) stream the job's logs to ``out`` until it ends.

    Returns the job's status: the final one when following, else the one after submission.
    Raises ``ConfigError`` before contacting the cluster, ``SubmitError`` if it cannot be used.
    """
    out = out or sys.stdout
    cfg = load_config(config_path, overrides)
    check_supported(cfg)
    root, config_rel = _project_root(Path(config_path))
    extra = _tracking_overrides(cfg, root, address)
    load_config(config_path, [*overrides, *extra])  # what the job will load must load here too
    entrypoint = shlex.join(["python", "-m", "lifelong", "run", config_rel, *overrides, *extra,
                             "--no-progress"])
    runtime_env: dict[str, Any] = {
        "working_dir": str(root), "excludes": EXCLUDES,
        "env_vars": {k: os.environ[k] for k in PASS_THROUGH if k in os.environ}}
    client = _client(address)
    try:
        job_id = client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env)
    except Exception as err:  # upload refused (too large), cluster gone meanwhile, ...
        raise SubmitError(f"{address}: the cluster did not take the job ({first_line(err)[:300]})") from None
    _note(f"submitted Ray job {job_id} to {address}: {entrypoint}")
    if not follow:
        _note(f"follow it with: ray job logs --follow {job_id} --address {address}")
        return str(client.get_job_status(job_id))
    try:
        asyncio.run(_stream(client, job_id, out))
        status = _final_status(client, job_id)
    except KeyboardInterrupt:
        _note(f"stopped following; job {job_id} goes on (ray job stop {job_id} --address {address})")
        raise
    except Exception as err:  # the head died or the connection dropped mid-stream
        raise SubmitError(f"lost job {job_id} on {address} ({first_line(err)[:200]}); it may still "
                          f"be running: ray job status {job_id} --address {address}") from None
    _note(f"job {job_id} {status}")
    return status


def _project_root(config: Path) -> tuple[Path, str]:
    """The directory to upload and the config's path inside it: the cwd when it holds the
    config (a checkout: ``lifelong/`` comes along, so ``python -m lifelong`` runs this code),
    else the config's own directory (the cluster must then have lifelong installed)."""
    config = config.resolve()
    cwd = Path.cwd().resolve()
    root = cwd if config.is_relative_to(cwd) else config.parent
    return root, config.relative_to(root).as_posix()


def _tracking_overrides(cfg: RunConfig, root: Path, address: str) -> list[str]:
    """A relative store, or the default ``./mlartifacts``, would land in Ray's temporary copy
    of the working dir and vanish with it: make them absolute paths under the project root
    on this machine, where ``lifelong run`` from here would have put them."""
    t = cfg.tracking
    uri = resolve_uri(t.uri, root)
    artifacts = t.artifact_location
    if artifacts is None:
        artifacts = default_artifact_location(uri, root)  # None for a server: it decides
    elif "://" not in artifacts:
        artifacts = (root / artifacts).resolve().as_uri()
    if uri.startswith(("sqlite:", "file:")) and not _is_local(address):
        _note(f"warning: tracking.uri={uri} is a path on this machine; the job on {address} "
              f"writes it only if that cluster is this machine (pass tracking.uri=http://HOST:5000)")
    extra = [f"tracking.uri={uri}"] if uri != t.uri else []
    if artifacts != t.artifact_location:
        extra.append(f"tracking.artifact_location={artifacts}")
    return extra


def _is_local(address: str) -> bool:
    return urlsplit(address if "://" in address else f"//{address}").hostname in LOCAL_HOSTS


def _client(address: str) -> Any:
    """A JobSubmissionClient for exactly ``address`` (Ray lets RAY_ADDRESS and
    RAY_API_SERVER_ADDRESS override it: not here, the user named it)."""
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    _quiet_ray_client_logs()  # after the imports: they set their loggers' levels
    headers = _auth_headers()
    try:
        with _without_env("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
            return JobSubmissionClient(address, headers=headers)
    except AuthenticationError as err:
        hint = "refused the token" if headers else "requires a token: set RAY_AUTH_MODE=token"
        raise SubmitError(f"{address}: the Ray cluster {hint} ({first_line(err)[:200]})") from None
    except Exception as err:
        raise SubmitError(f"cannot reach the Ray cluster at {address} ({first_line(err)[:200]})") from None


def _auth_headers() -> dict[str, str]:
    """The token header when RAY_AUTH_MODE=token. Ray reads that variable once per process;
    reading it here makes the value at call time count (and a missing token one line)."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
        return {}
    from ray._raylet import AuthenticationTokenLoader

    headers = dict(AuthenticationTokenLoader.instance().get_token_for_http_header(ignore_auth_mode=True))
    if not headers:
        raise SubmitError("RAY_AUTH_MODE=token but no Ray token found: run `ray get-auth-token "
                          "--generate` (~/.ray/auth_token), or set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH")
    return headers


@contextmanager
def _without_env(*names: str) -> Iterator[None]:
    saved = {n: os.environ.pop(n) for n in names if n in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


async def _stream(client: Any, job_id: str, out: TextIO) -> None:
    async for chunk in client.tail_job_logs(job_id):
        out.write(chunk)
        out.flush()


def _final_status(client: Any, job_id: str, timeout: float = 60) -> str:
    """The log stream can close a moment before the job's status turns terminal."""
    deadline = time.monotonic() + timeout
    while True:
        status = client.get_job_status(job_id)
        if status.is_terminal() or time.monotonic() > deadline:
            return str(status)
        time.sleep(0.5)


def _quiet_ray_client_logs() -> None:
    """Ray's client narrates packaging and uploads line by line, and warns that ``.git`` and
    ``.venv`` stay behind (as they should): keep stderr for what needs the user's eyes."""
    import logging

    for name, level in (("ray._private.runtime_env.packaging", logging.WARNING),
                        ("ray._private.runtime_env.working_dir", logging.ERROR),
                        ("ray.dashboard.modules.dashboard_sdk", logging.WARNING),
                        ("ray.dashboard.modules.job.sdk", logging.WARNING)):
        logging.getLogger(name).setLevel(level)


def _note(line: str) -> None:
    """Our own lines go to stderr: stdout carries the job's output only."""
    print(f"lifelong: {line}", file=sys.stderr, flush=True)
