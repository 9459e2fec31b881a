"""DeepSpeed's MoE layer with expert parallelism on this platform's CPU setup (gloo, fp32).

Evaluates ``deepspeed.moe.layer.MoE`` at ep_size=2 on 2 CPU ranks before the platform
relies on it: does gloo's all-to-all carry it (forward, backward, optimizer step), does
it train the same experts as one plain worker on the whole batch (and under which gate
settings), how many expert parameter and Adam state bytes each worker holds, and what a
step costs against data-parallel experts (every rank holding all experts).

Spawns its own 2 processes (gloo on 127.0.0.1), prints findings and ratios; about 1-2
minutes on 2 cores. No timed assertions: the figures are printed, not checked.

    .venv/bin/python benchmarks/expert_parallel.py
"""

from __future__ import annotations

import os
import socket
import statistics
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.distributed as tdist
import torch.multiprocessing as mp
from torch import nn

WORLD = 2
D_IN, D_OUT = 32, 8


@dataclass(frozen=True)
class Setting:
    """One MoE gate configuration: the knobs that decide whether a rank's routing depends
    on its own slice of the batch."""

    k: int = 1
    drop_tokens: bool = False
    capacity_factor: float = 1.0
    use_rts: bool = False
    noisy_gate_policy: str | None = None
    top2_2nd_expert_sampling: bool = False
    aux_coef: float = 0.0
    optim: str = "adam"

    def label(self) -> str:
        gate = f"k={self.k} drop_tokens={self.drop_tokens}"
        if self.drop_tokens:
            gate += f" cf={self.capacity_factor:g}"
        extras = [name for name, on in (("use_rts", self.use_rts),
                                        (f"noisy={self.noisy_gate_policy}", self.noisy_gate_policy),
                                        ("2nd_sampling", self.top2_2nd_expert_sampling)) if on]
        if self.aux_coef:
            extras.append(f"aux={self.aux_coef:g}")
        return f"{gate} {self.optim}" + (" " + ",".join(extras) if extras else "")


class MoEModel(nn.Module):
    """Dense in-projection, one DeepSpeed MoE layer of MLP experts, dense out-projection."""

    def __init__(self, hidden: int, ffn: int, experts: int, ep_size: int, s: Setting) -> None:
        super().__init__()
        from deepspeed.moe.layer import MoE

        self.inp = nn.Linear(D_IN, hidden)
        expert = nn.Sequential(nn.Linear(hidden, ffn), nn.ReLU(), nn.Linear(ffn, hidden))
        self.moe = MoE(hidden, expert, num_experts=experts, ep_size=ep_size, k=s.k,
                       capacity_factor=s.capacity_factor, eval_capacity_factor=s.capacity_factor,
                       min_capacity=0, noisy_gate_policy=s.noisy_gate_policy,
                       drop_tokens=s.drop_tokens, use_rts=s.use_rts,
                       top2_2nd_expert_sampling=s.top2_2nd_expert_sampling)
        self.out = nn.Linear(hidden, D_OUT)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, l_aux, self.counts = self.moe(torch.relu(self.inp(x)))
        return self.out(h), l_aux


def expert_key(local: str, rank: int, local_experts: int) -> str:
    """The ep_size=1 name of a local expert parameter: rank r holds experts
    r*local_experts ... (the all-to-all sends chunk r of the expert dimension to rank r)."""
    head, tail = local.split("deepspeed_experts.")
    index, rest = tail.split(".", 1)
    return f"{head}deepspeed_experts.{rank * local_experts + int(index)}.{rest}"


def global_name(name: str, rank: int, local_experts: int) -> str:
    return expert_key(name, rank, local_experts) if "deepspeed_experts." in name else name


def load_full(model: MoEModel, full: dict[str, torch.Tensor], rank: int) -> None:
    """Copy the ep_size=1 initialisation into this rank's (possibly expert-sharded) model."""
    n_local = model.moe.num_local_experts
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(full[global_name(name, rank, n_local)])


def make_optimizer(model: nn.Module, s: Setting, lr: float) -> torch.optim.Optimizer:
    """A torch optimizer over DeepSpeed's MoE parameter groups (dense, then one per expert group)."""
    from deepspeed.moe.utils import split_params_into_different_moe_groups_for_optimizer

    groups = split_params_into_different_moe_groups_for_optimizer(
        {"params": list(model.parameters()), "name": "dense"})
    return torch.optim.Adam(groups, lr=lr) if s.optim == "adam" else torch.optim.SGD(groups, lr=lr)


def ds_engine(model: nn.Module, optimizer: torch.optim.Optimizer, micro_batch: int) -> Any:
    import deepspeed

    config = {"train_micro_batch_size_per_gpu": micro_batch, "gradient_accumulation_steps": 1,
              "gradient_clipping": 0.0, "zero_optimization": {"stage": 0},
              "steps_per_print": 2**31 - 1, "wall_clock_breakdown": False}
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    return engine


def loss_of(out: torch.Tensor, l_aux: torch.Tensor, y: torch.Tensor, s: Setting) -> torch.Tensor:
    return nn.functional.mse_loss(out, y) + s.aux_coef * l_aux


# --- 1. does it run, and does it agree with one plain worker -----------------------------

HIDDEN, FFN, EXPERTS, BATCH, STEPS, LR = 16, 32, 4, 64, 5, 1e-2


def agreement(s: Setting, rank: int) -> dict[str, float]:
    """Train the same MoE model (same init, same data) for STEPS steps two ways and compare:
    (a) one plain worker, ep_size=1, the whole batch, torch optimizer, no collectives;
    (b) a DeepSpeed engine on 2 ranks, ep_size=2, each rank half the batch."""
    torch.manual_seed(0)
    ref = MoEModel(HIDDEN, FFN, EXPERTS, 1, s)
    full = {k: v.detach().clone() for k, v in ref.named_parameters()}
    gen = torch.Generator().manual_seed(1)
    xs = [torch.randn(BATCH, D_IN, generator=gen) for _ in range(STEPS + 1)]
    ys = [torch.randn(BATCH, D_OUT, generator=gen) for _ in range(STEPS + 1)]
    half = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)

    # l_aux at init: the plain worker's over the whole batch vs the ranks' mean of their own.
    torch.manual_seed(2)
    with torch.no_grad():
        _, aux_whole = ref(xs[0])
    ref_opt = make_optimizer(ref, s, LR)
    torch.manual_seed(3)
    for x, y in zip(xs[:STEPS], ys[:STEPS]):
        ref_opt.zero_grad()
        loss_of(*ref(x), y, s).backward()
        ref_opt.step()
    with torch.no_grad():
        ref_out = ref(xs[STEPS])[0][half]
    ref_params = dict(ref.named_parameters())

    torch.manual_seed(0)
    ep = MoEModel(HIDDEN, FFN, EXPERTS, WORLD, s)
    load_full(ep, full, rank)
    engine = ds_engine(ep, make_optimizer(ep, s, LR), BATCH // WORLD)
    torch.manual_seed(2)
    with torch.no_grad():
        _, aux_rank = engine(xs[0][half])
    torch.manual_seed(3)
    for x, y in zip(xs[:STEPS], ys[:STEPS]):
        loss = loss_of(*engine(x[half]), y[half], s)
        engine.backward(loss)
        engine.step()
    with torch.no_grad():
        ep_out = engine(xs[STEPS][half])[0]

    n_local = ep.moe.num_local_experts
    diff = {"expert": 0.0, "dense": 0.0}
    for name, p in ep.named_parameters():
        d = (p.detach() - ref_params[global_name(name, rank, n_local)].detach()).abs().max().item()
        kind = "expert" if getattr(p, "allreduce", True) is False else "dense"
        diff[kind] = max(diff[kind], d)
    aux_mean = aux_rank.detach().clone()
    tdist.all_reduce(aux_mean)
    got = torch.tensor([diff["expert"], diff["dense"], (ep_out - ref_out).abs().max().item()])
    tdist.all_reduce(got, op=tdist.ReduceOp.MAX)
    return {"expert": got[0].item(), "dense": got[1].item(), "output": got[2].item(),
            "aux_whole": aux_whole.item(), "aux_rank_mean": aux_mean.item() / WORLD}


# --- 3. bytes per worker ------------------------------------------------------------------

def state_bytes(optimizer: torch.optim.Optimizer, params: list[nn.Parameter]) -> int:
    wanted = {id(p) for p in params}
    return sum(t.numel() * t.element_size() for p, st in optimizer.state.items() if id(p) in wanted
               for t in st.values() if torch.is_tensor(t) and t.dim() > 0)


# --- 4. step time: expert parallel vs data-parallel experts -------------------------------

T_HIDDEN, T_FFN, T_EXPERTS, T_BATCH, WARMUP, TIMED, ROUND = 256, 512, 8, 256, 5, 60, 5


def timed_steps(s: Setting, rank: int) -> dict[int, dict[str, float]]:
    """Per-step wall time (forward + backward + step through the DeepSpeed engine) with the
    global batch split across the 2 ranks, for ep_size=1 (data-parallel experts) and
    ep_size=2; and the bytes this rank holds in each. The two engines alternate in blocks
    of ROUND steps, so that load from elsewhere on the shared cores hits both alike."""
    micro = T_BATCH // WORLD
    gen = torch.Generator().manual_seed(10 + rank)
    x, y = torch.randn(micro, D_IN, generator=gen), torch.randn(micro, D_OUT, generator=gen)
    setups = {}
    for ep_size in (1, WORLD):
        torch.manual_seed(0)
        model = MoEModel(T_HIDDEN, T_FFN, T_EXPERTS, ep_size, s)
        opt = make_optimizer(model, s, 1e-3)
        setups[ep_size] = (model, opt, ds_engine(model, opt, micro), [])
    for block in range((WARMUP + TIMED) // ROUND):
        for model, opt, engine, times in setups.values():
            for _ in range(ROUND):
                tdist.barrier()
                t0 = time.perf_counter()
                engine.backward(loss_of(*engine(x), y, s))
                engine.step()
                times.append(time.perf_counter() - t0)
    result = {}
    for ep_size, (model, opt, engine, times) in setups.items():
        expert = [p for p in model.parameters() if getattr(p, "allreduce", True) is False]
        dense = [p for p in model.parameters() if getattr(p, "allreduce", True) is not False]
        step = torch.tensor(statistics.median(times[WARMUP:]))
        tdist.all_reduce(step, op=tdist.ReduceOp.MAX)
        # The dispatch capacity of the last step: the configured one, or without dropping the
        # largest expert count over the ranks (top1gating's MAX all-reduce).
        top = model.counts.max().clone()
        tdist.all_reduce(top, op=tdist.ReduceOp.MAX)
        capacity = -(-micro * s.k * s.capacity_factor // T_EXPERTS) if s.drop_tokens else top.item()
        result[ep_size] = {"step_s": step.item(), "capacity": int(capacity),
                           "expert_param_bytes": sum(p.numel() * p.element_size() for p in expert),
                           "expert_adam_bytes": state_bytes(opt, expert),
                           "dense_param_bytes": sum(p.numel() * p.element_size() for p in dense),
                           "dense_adam_bytes": state_bytes(opt, dense),
                           "expert_groups": sum(1 for g in opt.param_groups if g.get("moe"))}
    return result


def time_collective(fn: Callable[[], None], reps: int = 50) -> float:
    for _ in range(5):
        fn()
    tdist.barrier()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps


def collectives_alone(s: Setting, capacity: int, expert_numel: int) -> dict[str, float]:
    """The collectives that differ between the two layouts, timed alone on tensors of the
    step's shapes. ep_size=2 adds 4 all_to_all_single of the [experts, capacity, hidden]
    buffer (2 forward, 2 backward) and, without token dropping, one MAX all-reduce of the
    capacity; data-parallel experts instead all-reduce every expert gradient."""
    buf = torch.randn(T_EXPERTS, capacity, T_HIDDEN)
    out = torch.empty_like(buf)
    a2a = time_collective(lambda: tdist.all_to_all_single(out, buf))
    cap = torch.tensor(7)
    ar = time_collective(lambda: tdist.all_reduce(cap, op=tdist.ReduceOp.MAX)) if not s.drop_tokens else 0.0
    grads = torch.randn(expert_numel)
    grad_ar = time_collective(lambda: tdist.all_reduce(grads), reps=10)
    return {"a2a_s": a2a, "a2a_bytes": buf.numel() * buf.element_size(), "cap_allreduce_s": ar,
            "capacity": capacity, "grad_allreduce_s": grad_ar, "grad_bytes": grads.numel() * 4}


# --- the run ------------------------------------------------------------------------------

def probe_all_to_all(rank: int) -> str:
    """Does torch's gloo backend implement all_to_all_single on CPU tensors?"""
    x = torch.arange(4.0) + 10 * rank
    y = torch.empty(4)
    try:
        tdist.all_to_all_single(y, x)
    except Exception as exc:  # report the exact error line, whatever it is
        return f"FAILS: {type(exc).__name__}: {str(exc).splitlines()[0]}"
    return f"works (rank {rank} got {y.tolist()})"


AGREEMENT = [
    Setting(k=1, optim="sgd"),
    Setting(k=1),
    Setting(k=2),
    Setting(k=1, drop_tokens=True, capacity_factor=1.0),
    Setting(k=2, drop_tokens=True, capacity_factor=1.0),
    Setting(k=1, drop_tokens=True, capacity_factor=float(EXPERTS)),
    Setting(k=2, drop_tokens=True, capacity_factor=float(EXPERTS)),
    Setting(k=1, drop_tokens=True, capacity_factor=1.0, use_rts=True),
    Setting(k=1, noisy_gate_policy="RSample"),
    Setting(k=1, noisy_gate_policy="Jitter"),
    Setting(k=2, top2_2nd_expert_sampling=True),
    Setting(k=1, aux_coef=0.01),
    Setting(k=2, aux_coef=0.01),
    Setting(k=1, aux_coef=0.01, optim="sgd"),
]
TIMING = [Setting(k=1, drop_tokens=True, capacity_factor=1.0), Setting(k=1, drop_tokens=False)]


def worker(rank: int, port: int, results: Any) -> None:
    os.environ.update(DS_ACCELERATOR="cpu", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                      RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD))
    torch.set_num_threads(1)  # 2 ranks on 2 cores
    warnings.filterwarnings("ignore")
    import logging

    import deepspeed
    import deepspeed.ops
    from deepspeed.utils import logger

    logger.setLevel(logging.ERROR)
    # As lifelong/platform/engine.py does: never JIT-build the CPU shm all-reduce op.
    vars(deepspeed.ops).setdefault("__compatible_ops__", {})["deepspeed_shm_comm"] = False
    deepspeed.init_distributed(dist_backend="gloo")
    out: dict[str, Any] = {"backend": tdist.get_backend(), "probe": probe_all_to_all(rank)}
    out["agreement"] = []
    for s in AGREEMENT:
        try:
            out["agreement"].append((s.label(), agreement(s, rank)))
        except Exception as exc:
            out["agreement"].append((s.label(), f"{type(exc).__name__}: {str(exc).splitlines()[0]}"))
    out["timing"] = []
    for s in TIMING:
        by_ep = timed_steps(s, rank)
        alone = collectives_alone(s, by_ep[WORLD]["capacity"], by_ep[1]["expert_param_bytes"] // 4)
        out["timing"].append((s.label(), by_ep, alone))
    if rank == 0:
        results.put(out)
    tdist.barrier()
    tdist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def report(out: dict[str, Any], seconds: float) -> None:
    print(f"\nbackend: {out['backend']}; torch {torch.__version__}; "
          f"gloo all_to_all_single on CPU: {out['probe']}")
    print(f"\n1-2. MoE (hidden {HIDDEN}, {EXPERTS} experts of {HIDDEN}-{FFN}-{HIDDEN}), {STEPS} steps: "
          f"ep_size=2 on 2 ranks ({BATCH // WORLD} rows each) vs 1 plain worker ep_size=1 ({BATCH} rows)")
    print(f"{'setting':58s}{'experts':>10s}{'dense':>10s}{'output':>10s}{'l_aux 1w':>10s}{'mean/rank':>10s}")
    for label, r in out["agreement"]:
        if isinstance(r, str):
            print(f"{label:58s}  FAILS: {r}")
            continue
        print(f"{label:58s}{r['expert']:10.1e}{r['dense']:10.1e}{r['output']:10.1e}"
              f"{r['aux_whole']:10.4f}{r['aux_rank_mean']:10.4f}")
    print("   (max |difference| after training: expert params, dense params (gate, in/out), outputs "
          "on a held batch; fp32 rounding is ~1e-7)")
    for label, by_ep, a2a in out["timing"]:
        one, two = by_ep[1], by_ep[WORLD]
        print(f"\n3-4. {T_EXPERTS} experts of {T_HIDDEN}-{T_FFN}-{T_HIDDEN}, global batch {T_BATCH} "
              f"({T_BATCH // WORLD}/rank), Adam, {label}")
        for ep, r in by_ep.items():
            print(f"   ep_size={ep}: step {r['step_s'] * 1e3:7.2f} ms | per worker: expert params "
                  f"{r['expert_param_bytes'] / 2**20:6.2f} MiB, expert Adam state "
                  f"{r['expert_adam_bytes'] / 2**20:6.2f} MiB, dense params {r['dense_param_bytes'] / 2**10:6.1f} KiB"
                  f" ({r['expert_groups']} expert param group)")
        print(f"   expert bytes ep2/ep1: params {two['expert_param_bytes'] / one['expert_param_bytes']:.3f}, "
              f"Adam state {two['expert_adam_bytes'] / one['expert_adam_bytes']:.3f}")
        per_step = 4 * a2a["a2a_s"] + a2a["cap_allreduce_s"]
        print(f"   step time ep2/ep1 (data-parallel experts): {two['step_s'] / one['step_s']:.3f}; "
              f"all_to_all_single of [{T_EXPERTS}, {a2a['capacity']}, {T_HIDDEN}] fp32 "
              f"({a2a['a2a_bytes'] / 2**10:.0f} KiB) alone: {a2a['a2a_s'] * 1e3:.3f} ms, "
              f"x4 per step" + (f" + capacity all-reduce {a2a['cap_allreduce_s'] * 1e3:.3f} ms"
                                if a2a["cap_allreduce_s"] else "")
              + f" = {per_step * 1e3:.2f} ms ({per_step / two['step_s']:.0%} of the ep2 step)")
        print(f"   ep_size=1 instead all-reduces the expert gradients ({a2a['grad_bytes'] / 2**20:.2f} MiB): "
              f"{a2a['grad_allreduce_s'] * 1e3:.2f} ms alone ({a2a['grad_allreduce_s'] / one['step_s']:.0%} "
              f"of the ep1 step)")
    print(f"\nwall time {seconds:.0f} s")


def main() -> None:
    t0 = time.perf_counter()
    ctx = mp.get_context("spawn")
    results = ctx.SimpleQueue()
    procs = mp.start_processes(worker, args=(free_port(), results), nprocs=WORLD, start_method="spawn",
                               join=False)
    out = results.get()
    while not procs.join():
        pass
    report(out, time.perf_counter() - t0)


if __name__ == "__main__":
    main()
