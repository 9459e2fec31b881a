"""The multi-tensor calls (``sgd_update_many``/``adam_update_many``): the C kernel against
one reference call per tensor over tensors of mixed sizes, masks, spans and pulls, at
several thread counts; bit-identical to its own single-tensor calls; and the packed
arrays it keeps per list of items."""

from __future__ import annotations

import gc

import pytest
import torch

import lifelong.kernels as kernels
from lifelong.kernels import REFERENCE, cpu
from lifelong.kernels.reference import UpdateItem
from tests.unit import kernel_cases
from tests.unit.kernel_cases import MANY_SHAPES, ManyCase


@pytest.fixture(scope="module")
def cpu_kernels() -> kernels.Kernels:
    selected = kernels.select(torch.device("cpu"))
    assert selected.name == "cpu", "the C kernel did not build here (see the warning)"
    return selected


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("optimizer", list(kernel_cases.OPTIMIZERS))
def test_a_many_call_matches_the_reference_per_tensor(cpu_kernels: kernels.Kernels, optimizer: str,
                                                      threads: int) -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        case = ManyCase(optimizer, MANY_SHAPES, seed=threads)
        kernel_cases.check_many(case, cpu_kernels.sgd_update_many, cpu_kernels.adam_update_many)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("optimizer", ["sgd_momentum", "adam"])
def test_gradients_passed_apart_from_the_items(cpu_kernels: kernels.Kernels, optimizer: str) -> None:
    case = ManyCase(optimizer, MANY_SHAPES, seed=9, grads_apart=True)
    kernel_cases.check_many(case, cpu_kernels.sgd_update_many, cpu_kernels.adam_update_many)


@pytest.mark.parametrize("grads_apart", [False, True])
@pytest.mark.parametrize("optimizer", ["sgd_momentum", "adamw"])
def test_the_reference_many_call_is_its_single_call_per_tensor(optimizer: str, grads_apart: bool) -> None:
    case = ManyCase(optimizer, MANY_SHAPES[:6], seed=5, grads_apart=grads_apart)
    kernel_cases.check_many(case, REFERENCE.sgd_update_many, REFERENCE.adam_update_many)


def _problem(seed: int, sizes: list[int]) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i, n in enumerate(sizes):
        rows = torch.nonzero(torch.rand(n // 100, generator=g) < 0.1).flatten()
        out.append({"param": torch.randn(n, generator=g), "grad": torch.randn(n, generator=g),
                    "exp_avg": 0.1 * torch.randn(n, generator=g), "exp_avg_sq": torch.rand(n, generator=g),
                    "scale": (torch.rand(n, generator=g) < 0.5).to(torch.uint8) if i % 3 == 0 else None,
                    "spans": torch.stack([rows * 100, rows * 100 + 100], 1) if i % 3 == 1 else None})
    return out


def test_a_many_call_is_bit_identical_to_single_calls(cpu_kernels: kernels.Kernels) -> None:
    sizes = [100, 70_000, 1_300, 250_000, 3_000, 40_000, 100]
    many, single = _problem(3, sizes), _problem(3, sizes)
    hyper = dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.1, decoupled=True)
    items = [UpdateItem(t["param"], t["grad"], exp_avg=t["exp_avg"], exp_avg_sq=t["exp_avg_sq"],
                        scale=t["scale"], spans=t["spans"]) for t in many]
    cpu_kernels.adam_update_many(items, step=3, **hyper)
    for t in single:
        cpu_kernels.adam_update(t["param"], t["grad"], t["exp_avg"], t["exp_avg_sq"], step=3, **hyper,
                                scale=t["scale"], spans=t["spans"])
    for got, want in zip(many, single):
        for key in ("param", "exp_avg", "exp_avg_sq"):
            assert torch.equal(got[key].view(torch.int32), want[key].view(torch.int32)), key


def test_packed_arrays_are_kept_while_their_items_live() -> None:
    packer = cpu._Packer(size=2)
    p, g, b = torch.zeros(10), torch.zeros(10), torch.zeros(10)
    items = [UpdateItem(p, g, momentum_buffer=b)]
    first = packer.get(items, "sgd")
    assert packer.get(list(items), "sgd") is first  # the same items, another list: kept
    assert first.table[0].state1 is None
    assert packer.get(items, "sgd_momentum").table[0].state1 == b.data_ptr()
    del items
    gc.collect()
    assert not packer.entries  # dropped with their item
    other = torch.ones(10)
    renewed = [UpdateItem(other, g)]  # may reuse the dead item's id: must not hit
    assert packer.get(renewed, "sgd").table[0].param == other.data_ptr()
    kept = [UpdateItem(g, g)], [UpdateItem(p, p)]
    for more in kept:
        packer.get(more, "sgd")
    assert len(packer.entries) == 2  # bounded: the oldest went
    assert packer.get(kept[1], "sgd") is packer.get(kept[1], "sgd")


def test_a_bad_tensor_in_a_many_call_is_refused(cpu_kernels: kernels.Kernels) -> None:
    good = UpdateItem(torch.zeros(8), torch.zeros(8), momentum_buffer=torch.zeros(8))
    short_grad = UpdateItem(torch.zeros(8), torch.zeros(4), momentum_buffer=torch.zeros(8))
    with pytest.raises(ValueError, match="grad must be a contiguous CPU"):
        cpu_kernels.sgd_update_many([good, short_grad], lr=0.1, momentum=0.9, weight_decay=0.0)
    with pytest.raises(ValueError, match="momentum_buffer"):
        cpu_kernels.sgd_update_many([UpdateItem(torch.zeros(8), torch.zeros(8))], lr=0.1,
                                    momentum=0.9, weight_decay=0.0)
    with pytest.raises(ValueError, match="exp_avg is missing"):
        cpu_kernels.adam_update_many([good], step=1, lr=0.1, beta1=0.9, beta2=0.99, eps=1e-8,
                                     weight_decay=0.0, decoupled=False)
    cpu_kernels.sgd_update_many([], lr=0.1, momentum=0.9, weight_decay=0.0)  # nothing to do
    no_grad = UpdateItem(torch.zeros(8), None, momentum_buffer=torch.zeros(8))
    sgd = dict(lr=0.1, momentum=0.9, weight_decay=0.0)
    for impl in (cpu_kernels, REFERENCE):
        with pytest.raises(ValueError, match="grad is missing"):
            impl.sgd_update_many([no_grad], **sgd)
        with pytest.raises(ValueError, match="2 grads for 1 items"):
            impl.sgd_update_many([no_grad], grads=[torch.zeros(8)] * 2, **sgd)
    with pytest.raises(ValueError, match="grad must be a contiguous CPU"):
        cpu_kernels.sgd_update_many([no_grad], grads=[torch.zeros(4, 4)[:, :2]], **sgd)
