"""The C/OpenMP kernel against the reference, the kernel cache, and select()'s fallback.

Tolerance: rtol 1e-6, atol 1e-7 (kernel_cases.RTOL/ATOL). SGD is bit-identical to the
reference here; Adam differs by an ulp where torch's CPU sqrt is not correctly rounded.
Frozen elements (scale 0 or outside the spans) must keep their exact bits.
"""

from __future__ import annotations

import logging
import os
import stat

import pytest
import torch

import lifelong.kernels as kernels
from lifelong.kernels import REFERENCE, cpu, cpu_build, reference
from tests.unit import kernel_cases
from tests.unit.kernel_cases import Case

SMALL = [(1, 1), (3, 5), (16, 65)]  # 1, 15 and 1040 elements: none a multiple of 16
LARGE = (300, 1031)  # 309,300 elements: the multi-threaded path, with or without spans
LARGE_CASES = [Case(optimizer, scale, spans, True, *LARGE, seed=i, spans_as_mask=spans == "elements")
               for i, optimizer in enumerate(kernel_cases.OPTIMIZERS)
               for scale, spans in (("uint8", "none"), ("float", "rows"), ("none", "rows"),
                                    ("none", "elements"))]


@pytest.fixture(scope="module")
def cpu_kernels() -> kernels.Kernels:
    selected = kernels.select(torch.device("cpu"))
    assert selected.name == "cpu", "the C kernel did not build here (see the warning)"
    return selected


@pytest.mark.parametrize("case", kernel_cases.cases(SMALL), ids=lambda c: c.id)
def test_small_updates_match_the_reference(cpu_kernels: kernels.Kernels, case: Case) -> None:
    kernel_cases.check(case, cpu_kernels.sgd_update, cpu_kernels.adam_update)


@pytest.mark.parametrize("case", LARGE_CASES, ids=lambda c: c.id)
def test_large_updates_match_the_reference(cpu_kernels: kernels.Kernels, case: Case) -> None:
    kernel_cases.check(case, cpu_kernels.sgd_update, cpu_kernels.adam_update)


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("spans", ["none", "rows"])
def test_thread_counts_split_the_work_exactly(cpu_kernels: kernels.Kernels, threads: int,
                                              spans: str) -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for optimizer in ("sgd_momentum", "adamw"):
            case = Case(optimizer, "uint8", spans, True, *LARGE, seed=threads)
            kernel_cases.check(case, cpu_kernels.sgd_update, cpu_kernels.adam_update)
    finally:
        torch.set_num_threads(before)


def test_the_check_catches_a_kernel_that_moves_frozen_elements() -> None:
    def ignores_scale(*args, scale=None, **kwargs):
        reference.sgd_update(*args, **kwargs)

    with pytest.raises(AssertionError, match="frozen elements changed"):
        kernel_cases.check(Case("sgd_momentum", "uint8", "none", False, 4, 8), ignores_scale, None)


def test_a_bool_mask_acts_as_uint8(cpu_kernels: kernels.Kernels) -> None:
    g = torch.Generator().manual_seed(7)
    param, grad, buf = (torch.randn(1000, generator=g) for _ in range(3))
    mask = torch.rand(1000, generator=g) < 0.5
    results = []
    for scale in (mask, mask.to(torch.uint8)):
        p, b = param.clone(), buf.clone()
        cpu_kernels.sgd_update(p, grad, b, lr=0.1, momentum=0.9, weight_decay=0.0, scale=scale)
        results.append((p, b))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])
    assert torch.equal(results[0][0][~mask], param[~mask]) and not torch.equal(results[0][0], param)


def test_bad_inputs_are_refused(cpu_kernels: kernels.Kernels) -> None:
    p, g = torch.zeros(8, 8), torch.zeros(64)
    with pytest.raises(ValueError, match="contiguous"):
        cpu_kernels.sgd_update(p.t(), g, None, lr=0.1, momentum=0.0, weight_decay=0.0)
    with pytest.raises(ValueError, match="elements"):
        cpu_kernels.sgd_update(p, g[:10], None, lr=0.1, momentum=0.0, weight_decay=0.0)
    with pytest.raises(ValueError, match="momentum_buffer"):
        cpu_kernels.sgd_update(p, g, None, lr=0.1, momentum=0.9, weight_decay=0.0)
    with pytest.raises(ValueError, match="scale"):
        cpu_kernels.sgd_update(p, g, None, lr=0.1, momentum=0.0, weight_decay=0.0,
                               scale=torch.ones(64, dtype=torch.float64))
    with pytest.raises(ValueError, match="spans"):
        cpu_kernels.sgd_update(p, g, None, lr=0.1, momentum=0.0, weight_decay=0.0,
                               spans=torch.zeros(4, dtype=torch.int64))


def test_a_build_is_cached_and_written_whole(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LIFELONG_KERNEL_CACHE", str(tmp_path))
    cpu_build.load()
    (built,) = os.listdir(tmp_path)
    assert built.endswith(".so") and not built.startswith(".")
    assert os.stat(tmp_path / built).st_mode & stat.S_IRUSR

    def no_build(*args) -> None:
        raise AssertionError("rebuilt a cached kernel")

    monkeypatch.setattr(cpu_build, "_build", no_build)
    cpu.load_kernels()
    assert os.listdir(tmp_path) == [built]


@pytest.mark.parametrize("compiler", ["missing", "failing"])
def test_a_failed_build_falls_back_to_the_reference_with_one_warning(tmp_path, monkeypatch, caplog,
                                                                     compiler: str) -> None:
    cc = tmp_path / "cc"
    if compiler == "failing":  # answers --version, fails to compile
        cc.write_text('#!/bin/sh\n[ "$1" = --version ] && echo "fake cc 1.0" && exit 0\n'
                      'echo "fake cc: cannot compile" >&2; exit 1\n')
        cc.chmod(0o755)
    monkeypatch.setenv("CC", str(cc))
    monkeypatch.setenv("LIFELONG_KERNEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(kernels, "_selected", {})
    with caplog.at_level(logging.WARNING, logger="lifelong"):
        first = kernels.select(torch.device("cpu"))
        again = kernels.select(torch.device("cpu"))
    assert first is REFERENCE and again is REFERENCE
    seen = [r for r in caplog.records if r.name.startswith("lifelong")]
    assert [(r.name, r.levelno) for r in seen] == [("lifelong.kernels", logging.WARNING)]
    message = seen[0].getMessage()
    assert "\n" not in message and "using the reference updates on cpu" in message
    assert message.endswith("(engine.kernels=reference uses it without this warning)")
    assert str(cc) in message
    if compiler == "failing":
        assert "cannot compile" in message
    assert not (tmp_path / "cache").exists() or not os.listdir(tmp_path / "cache")


def test_select_choices(monkeypatch, caplog) -> None:
    monkeypatch.setattr(kernels, "_selected", {})
    with caplog.at_level(logging.WARNING, logger="lifelong"):
        assert kernels.select(torch.device("cpu"), "reference") is REFERENCE
        assert kernels.select("cpu", "auto") is kernels.select(torch.device("cpu"))
        assert not caplog.records
        assert kernels.select(torch.device("meta")) is REFERENCE
        assert kernels.select(torch.device("meta")) is REFERENCE
    assert [r.getMessage() for r in caplog.records] == [
        "kernels: using the reference updates on meta (no fused kernel for device type 'meta') "
        "(engine.kernels=reference uses it without this warning)"]
    with pytest.raises(ValueError, match="choice"):
        kernels.select(torch.device("cpu"), "fast")
