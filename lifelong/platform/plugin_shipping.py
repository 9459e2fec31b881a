"""Ship a strategy that lives in the user's own files to every Ray worker.

The driver finds ``strategy.name=mypkg.mod:Cls`` in its working directory, or loads
``path/to/file.py:Cls``; a Ray worker runs elsewhere (another node, Ray's own working
directory), where neither is importable. So the package directory (or the one file) is
uploaded once to the cluster's object store, and the stream actor and the learner processes
are started with it on their ``PYTHONPATH`` (Ray runtime_env ``py_modules``), ahead of
site-packages. Same path for embedded Ray, a joined cluster and a submitted job.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, Optional

from lifelong.strategies.registry import local_source


def strategy_runtime_env(strategy_name: str) -> Optional[dict[str, Any]]:
    """A runtime_env with the strategy's source uploaded (``gcs://`` URIs), or None when
    every worker can import it already (built-ins, entry points, installed packages).
    Needs a connected Ray."""
    source = local_source(strategy_name)
    if source is None:
        return None
    # Ray's own upload step for py_modules (what ray.init(runtime_env=...) runs): per-actor
    # runtime_envs accept URIs only, and the learners may run on a node without this path. Honours .gitignore, like a job's working_dir.
    from ray._private.runtime_env.py_modules import upload_py_modules_if_needed

    include_gitignore = os.environ.get("RAY_RUNTIME_ENV_IGNORE_GITIGNORE", "0") != "1"
    with tempfile.TemporaryDirectory(prefix="lifelong-plugin-") as scratch:
        env = upload_py_modules_if_needed({"py_modules": [str(source)], "excludes": ["__pycache__"]},
                                          include_gitignore=include_gitignore, scratch_dir=scratch)
    env.pop("excludes", None)  # only read by the upload
    return env
