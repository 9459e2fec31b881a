"""A Ray head of a test's own, started as docs/deploy.md starts one, and stopped without
`ray stop` (which would stop every Ray on this machine): only the processes of the
session it was started in are signalled. Its own temp dir keeps it out of /tmp/ray."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from tests.conftest import free_port
from tests.e2e.user_shell import user_env


def ports(n: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < n:
        ports.add(free_port())
    return sorted(ports)


def session_pids(sid: int) -> list[int]:
    """Every live process in session ``sid``: the head we started and all it spawned."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                # the comm field (2nd) may hold spaces: split after its closing parenthesis
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[3]) == sid and fields[0] != "Z":
                pids.append(int(entry.name))
    return pids


def stop_session(proc: subprocess.Popen, timeout: float = 30) -> None:
    proc.terminate()  # `ray start --block` shuts its own processes down on SIGTERM
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    deadline = time.time() + 10
    while session_pids(proc.pid) and time.time() < deadline:
        time.sleep(0.5)
    for pid in session_pids(proc.pid):  # stragglers (workers), still only our session's
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if proc.poll() is None:
        proc.wait(timeout=10)


def start_head(temp_dir: Path, bin_dir: Path, timeout: float = 120,
               dashboard: bool = False) -> tuple[subprocess.Popen, int, int]:
    """``RAY_AUTH_MODE=token ray start --head --node-ip-address 127.0.0.1 --port PORT
    --dashboard-host 127.0.0.1 --num-cpus 2 --block`` (docs/deploy.md), with every other port
    chosen free so it never meets another Ray on this machine, in the user's environment
    with this virtualenv first on PATH (as after ``source .venv/bin/activate``); returns once
    Ray says it started, with the process (stop it with ``stop_session``), the GCS port and
    the dashboard port (``dashboard``: the job API, for ``lifelong submit``)."""
    gcs, dash, client, agent_http, agent_grpc, env_agent, metrics, node_mgr, obj_mgr = ports(9)
    env = {**user_env(), "RAY_AUTH_MODE": "token", "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
           "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    cmd = [str(bin_dir / "ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
           "--port", str(gcs), "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash),
           *(["--include-dashboard", "true"] if dashboard else []), "--num-cpus", "2", "--object-store-memory", str(100 << 20),
           "--ray-client-server-port", str(client), "--dashboard-agent-listen-port", str(agent_http),
           "--dashboard-agent-grpc-port", str(agent_grpc), "--runtime-env-agent-port", str(env_agent),
           "--metrics-export-port", str(metrics), "--node-manager-port", str(node_mgr),
           "--object-manager-port", str(obj_mgr), "--temp-dir", str(temp_dir), "--disable-usage-stats"]
    log_path = temp_dir / "head.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=temp_dir, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    deadline = time.time() + timeout
    while "Ray runtime started" not in log_path.read_text():
        if proc.poll() is not None or time.time() > deadline:
            stop_session(proc)
            raise RuntimeError(f"the Ray head did not come up:\n{log_path.read_text()[-2000:]}")
        time.sleep(0.5)
    return proc, gcs, dash
