"""Preflight: combinations not proven correct are refused before any compute."""

from __future__ import annotations

import pytest

from lifelong.platform.errors import ConfigError, UnsupportedError
from lifelong.platform.preflight import check_supported
from tests.unit.test_strategies import BUILTINS, config


UNPROVEN = "tests.unit.plugin_fixture:MyStrategy"  # declares the default Support: stage 0, 1 worker


def test_preflight_refuses_two_workers_for_an_unproven_strategy():
    cfg = config({"name": UNPROVEN}, engine={"backend": "deepspeed", "workers": 2})
    with pytest.raises(UnsupportedError) as info:
        check_supported(cfg)
    assert f"'{UNPROVEN}'" in str(info.value) and "workers" in str(info.value)
    assert isinstance(info.value, ConfigError)  # exit code 2 on the CLI


def test_preflight_refuses_zero_stage_2_for_an_unproven_strategy():
    cfg = config({"name": UNPROVEN}, engine={"backend": "deepspeed", "zero_stage": 2})
    with pytest.raises(UnsupportedError) as info:
        check_supported(cfg)
    assert f"'{UNPROVEN}'" in str(info.value) and "stage 2" in str(info.value)


@pytest.mark.parametrize("name", BUILTINS)
@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_preflight_accepts_builtins_on_two_workers_at_every_stage(name, stage):
    """Proven by tests/e2e/test_sharding_equivalence.py."""
    check_supported(config({"name": name}, engine={"backend": "deepspeed", "workers": 2,
                                                   "zero_stage": stage}))


def test_preflight_refuses_a_global_batch_that_does_not_split_evenly():
    cfg = config({"name": "naive"}, engine={"backend": "deepspeed", "workers": 3})
    with pytest.raises(UnsupportedError) as info:
        check_supported(cfg)
    assert "train.batch_size" in str(info.value)


@pytest.mark.parametrize("name", BUILTINS)
def test_preflight_accepts_one_plain_worker(name):
    check_supported(config({"name": name}, engine={"backend": "deepspeed"}))
    check_supported(config({"name": name}, engine={"backend": "torch"}))


def test_preflight_refuses_torch_backend_with_two_workers():
    with pytest.raises(UnsupportedError) as info:
        check_supported(config({"name": "naive"}, engine={"backend": "torch", "workers": 2}))
    assert "engine.backend=torch" in str(info.value)
