"""Which Ray a run uses: a cluster named by ``RAY_ADDRESS``, or a local one of its own.

- ``RAY_ADDRESS=host:port`` (a cluster's GCS, as ``ray start --head`` prints, or what a
  submitted job sets): join it. A cluster that does not answer is one line and a non-zero
  exit within seconds; Ray's own client would retry for minutes.
- Unset: start a private Ray on 127.0.0.1 for this run (no dashboard: nothing uses it, and it
  costs a second of start-up), shut down with the run. Two runs at once each have their own.
  To keep Ray warm between runs, start one with ``ray start --head`` and export its address.
"""

from __future__ import annotations

import os
import socket
from typing import Optional

from lifelong.platform.errors import LifelongError, first_line

PROBE_TIMEOUT_S = 3.0


class ClusterError(LifelongError):
    """The Ray cluster named by RAY_ADDRESS cannot be joined; nothing ran."""

    exit_code = 5


def connect() -> bool:
    """Join ``RAY_ADDRESS`` or start a local Ray; True if this call started Ray (the caller
    shuts it down). A process that already called ``ray.init`` keeps its Ray."""
    import ray

    if ray.is_initialized():
        return False
    address = os.environ.get("RAY_ADDRESS", "").strip()
    if not address:
        ray.init(address="local", _node_ip_address="127.0.0.1", include_dashboard=False,
                 configure_logging=False, log_to_driver=True)
        return True
    join(address)
    return False


def join(address: str) -> None:
    import ray

    where = f"RAY_ADDRESS={address}"
    if address.startswith(("http://", "https://")):
        raise ClusterError(f"{where} is a dashboard (job submission) address: `lifelong run` joins "
                           f"a cluster at its GCS address host:port (`ray status` prints it), and "
                           f"`lifelong submit` takes the dashboard address")
    if address not in ("auto",) and not address.startswith("ray://"):
        unreachable = _unreachable(address)
        if unreachable:
            dialled = "" if unreachable == address else f" (dialled as {unreachable})"
            raise ClusterError(f"{where}: no Ray cluster answers{dialled}; start one with "
                               f"`ray start --head` or unset RAY_ADDRESS to run on a local Ray")
    try:
        ray.init(address=address, configure_logging=False, log_to_driver=True)
    except ConnectionError as err:
        token = "" if os.environ.get("RAY_AUTH_MODE") else (
            "; if the cluster was started with RAY_AUTH_MODE=token, export it here too")
        raise ClusterError(f"{where}: cannot join ({first_line(err)[:160]}){token}") from None


def _unreachable(address: str) -> Optional[str]:
    """The host:port Ray would dial for ``address`` if nothing listens there, else None.
    Ray dials a loopback address at this machine's own IP, so that is what is probed."""
    from ray._private.services import canonicalize_bootstrap_address

    try:
        target = canonicalize_bootstrap_address(address) or address
    except ValueError as err:
        raise ClusterError(f"RAY_ADDRESS={address}: {first_line(err)}") from None
    host, _, port = target.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=PROBE_TIMEOUT_S):
            return None
    except (OSError, ValueError):
        return target
