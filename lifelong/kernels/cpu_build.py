"""Builds ``cpu_update.c`` into a shared library once per machine and loads it with ctypes.

The library is cached under ``${LIFELONG_KERNEL_CACHE:-~/.cache/lifelong/kernels}`` by a
hash of the source, the flags, the compiler's version and the CPU (``-march=native`` code
only runs where it was built). It is written under a temporary name and renamed into
place, so processes building at once (two Ray learners) never load a half-written file.
The compiler is ``$CC`` when set, else ``gcc``.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import subprocess
import tempfile
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("cpu_update.c")
FLAGS = ("-O3", "-march=native", "-fopenmp", "-ffp-contract=off", "-fno-math-errno",
         "-shared", "-fPIC")


class KernelBuildError(RuntimeError):
    """The C kernel could not be compiled or loaded; the message says why."""


def cache_dir() -> Path:
    root = os.environ.get("LIFELONG_KERNEL_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "lifelong" / "kernels"


def compiler() -> str:
    return os.environ.get("CC") or "gcc"


def load() -> ctypes.CDLL:
    """The compiled kernel library, built first if this machine has no cached copy."""
    cc = compiler()
    source = SOURCE.read_bytes()
    link = torch_openmp_flags()
    key = hashlib.sha256(b"\0".join([
        source, " ".join(FLAGS + link).encode(), _compiler_version(cc).encode(),
        _cpu_fingerprint().encode(),
    ])).hexdigest()[:24]
    target = cache_dir() / f"{key}.so"
    if not target.exists():
        _build(cc, target, link)
    try:
        return ctypes.CDLL(str(target))
    except OSError as exc:
        raise KernelBuildError(f"cannot load {target}: {exc}") from exc


def torch_openmp_flags() -> tuple[str, ...]:
    """Link against torch's own libgomp, so the process keeps one OpenMP thread pool.

    With two runtimes, each pool's idle threads spin for a while after every parallel
    region and fight the other's for the cores. Where torch's copy has the system's soname
    (libgomp.so.1) the loader shares it anyway; wheels that bundle a renamed copy need this.
    ``--as-needed`` then drops the system libgomp that ``-fopenmp`` adds."""
    lib_dir = Path(torch.__file__).parent / "lib"
    bundled = sorted(lib_dir.glob("libgomp*.so*"))
    if not bundled:
        return ()
    return ("-Wl,--as-needed", f"-L{lib_dir}", f"-l:{bundled[0].name}", f"-Wl,-rpath,{lib_dir}")


def _build(cc: str, target: Path, link: tuple[str, ...]) -> None:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise KernelBuildError(f"cannot create the kernel cache {target.parent}: {exc}") from exc
    fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=".so.tmp", dir=target.parent)
    os.close(fd)
    try:
        cmd = [cc, *FLAGS, "-o", tmp, str(SOURCE), *link]  # libraries after the source
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise KernelBuildError(f"cannot run {cc!r}: {exc}") from exc
        if done.returncode != 0:
            first = (done.stderr.strip().splitlines() or ["no output"])[0]
            raise KernelBuildError(f"{cc} failed (exit {done.returncode}): {first}")
        os.chmod(tmp, 0o755)  # mkstemp made it 0600
        os.replace(tmp, target)
        log.debug("built %s with %s", target, " ".join(cmd))
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _compiler_version(cc: str) -> str:
    try:
        done = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise KernelBuildError(f"cannot run {cc!r}: {exc}") from exc
    if done.returncode != 0:
        raise KernelBuildError(f"{cc} --version failed (exit {done.returncode})")
    return done.stdout.strip()


def _cpu_fingerprint() -> str:
    """The CPU model and feature flags: what ``-march=native`` specialises for."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return f"{platform.machine()} {platform.processor()}"
    wanted = ("model name", "flags", "Features", "CPU part")
    picked = {line.split(":", 1)[0].strip(): line for line in lines if line.split(":", 1)[0].strip() in wanted}
    return "\n".join(sorted(picked.values()))
