"""DeepSpeed's shared-memory comm op is never built: a real DeepSpeedEngine (gloo, one rank)
in a fresh process leaves it unbuilt and prints no ``built successfully`` line. Building it
took a minute per venv path, for an op that serves only DeepSpeed's inference all-reduce."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import free_port
from tests.e2e.user_shell import user_env

BUILD_ONE_ENGINE = """
import deepspeed.comm.comm as dscomm
import deepspeed.ops
import torch
from lifelong.platform.config import EngineConfig, OptimConfig
from lifelong.platform.engine import DeepSpeedEngine

DeepSpeedEngine(torch.nn.Linear(4, 2), OptimConfig(), EngineConfig(), micro_batch_size=8)
print("backend", type(dscomm.cdb).__name__)
print("shm_comm_op", dscomm.cdb.shm_comm_op)
print("compatible", deepspeed.ops.__compatible_ops__.get("deepspeed_shm_comm"))
"""


def test_building_a_deepspeed_engine_does_not_build_the_shm_comm_op():
    env = {**user_env(), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
           "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "DS_ACCELERATOR": "cpu"}
    out = subprocess.run([sys.executable, "-c", BUILD_ONE_ENGINE], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert "backend TorchBackend" in lines  # the backend that would have built it
    assert "shm_comm_op None" in lines and "compatible False" in lines
    assert "built successfully" not in out.stdout + out.stderr
