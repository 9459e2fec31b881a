"""Where a run's tracking data goes, as URIs every process agrees on. Kept apart from
``tracking.py`` so the driver can resolve them without importing MLflow (about 2 s),
which it does in a thread while Ray starts."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from lifelong.platform.errors import TrackingError, first_line

PROBE_TIMEOUT_S = 5.0


def resolve_uri(uri: str, base: Path) -> str:
    """Make a relative ``sqlite:///x.db`` (or plain path) absolute, so workers whose
    working directory differs write to the same store."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{(base / uri[len('sqlite:///'):]).resolve()}"
    if "://" not in uri:
        return (base / uri).resolve().as_uri()
    return uri


def default_artifact_location(uri: str, base: Path) -> Optional[str]:
    """Local stores keep artifacts in ./mlartifacts; servers decide for themselves."""
    if uri.startswith(("sqlite:", "file:")):
        return (base / "mlartifacts").resolve().as_uri()
    return None


def check_server(uri: str) -> None:
    """An MLflow server that does not answer stops the run here, before Ray starts (the
    run itself is created while Ray starts). Only http(s) URIs are probed."""
    if not uri.startswith(("http://", "https://")):
        return
    import requests

    try:
        requests.get(uri.rstrip("/") + "/health", timeout=PROBE_TIMEOUT_S)
    except requests.RequestException as err:
        raise TrackingError(f"tracking.uri={uri}: cannot create the MLflow run (the server does "
                            f"not answer: {first_line(err)[:160]})") from None
