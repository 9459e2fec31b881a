"""How fast are lifelong's fused updates (lifelong/kernels), against what they replace?

10M fp32 parameters in 20 2-D tensors (rows of 256 to 1,024 elements), 2 threads; every
implementation does the same step on the same tensors, timed once per round in interleaved
rounds (the order rotates), and every figure is a ratio of medians from this one run, so a
noisy machine moves both sides of a ratio together. Every CPU timing starts from cold
caches (``cpu_clock``). The bandwidth bound is measured in the same rounds: a STREAM-like
in-place add ``a += b`` over the same tensor shapes.

1. masked SGD-momentum + EWC penalty (half the entries frozen): fused vs torch.optim.SGD
   with the penalty gradient and a save/restore of frozen entries as separate ops; and the
   fused step's bandwidth (the bytes it must move / time) as a fraction of the bound;
2. masked Adam: fused vs torch.optim.Adam with the same save/restore;
3. dense Adam: fused vs DeepSpeedCPUAdam (and, for information, torch's Adam(fused=True));
4. row-sparse SGD + EWC, 10% and 1% of rows as spans, vs the dense masked step (one
   many-call per step, as the engine's optimizer makes it);
5. the CPU implementation's choice: the C kernel vs torch.compile (inductor) of the reference;
6. on CUDA only: Triton fused Adam's bandwidth as a fraction of HBM's (an in-place add on
   the GPU) and vs torch's Adam(fused=True), on one flat tensor of ``--gpu-elements``
   (100M by default: a 10M working set would sit largely in an H100/H200's 50 MB L2).

Every baseline is first checked against lifelong/kernels/reference.py on small tensors.

    .venv/bin/python benchmarks/kernels.py [--rounds=15] [--threads=2] [--quick]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import _kernel_baselines as base  # noqa: E402
from lifelong.kernels import REFERENCE, Kernels, select  # noqa: E402

SHAPES = [(1536, 784), (1024, 784), (1024, 512), (512, 512), (512, 1024), (768, 784),
          (1280, 512), (256, 256), (1024, 400), (400, 400), (1024, 784), (640, 512),
          (512, 1024), (1024, 784), (384, 256), (1024, 512), (512, 784), (1024, 400),
          (512, 784), (1024, 512)]  # 10,027,264 elements
QUICK_SHAPES = [(max(4, rows // 100), cols) for rows, cols in SHAPES]
CHECK_SHAPES = [(16, 33), (9, 64), (40, 8)]
# Bytes per element a step must move: fp32 reads + writes, and the uint8 mask.
BYTES = {"add (bound)": 12, "sgd": 4 * 5 + 1 + 4 * 2, "adam": 4 * 4 + 1 + 4 * 3, "adam dense": 28}
# (figure, label, numerator, denominator, goal as "<=" or ">=" and a value)
FIGURES = [
    ("1", "masked SGD+EWC, fused / eager", "sgd fused", "sgd eager", ("<=", 0.38)),
    ("2", "masked Adam, fused / eager", "adam fused", "adam eager", ("<=", 0.11)),
    ("3", "dense Adam, fused / DeepSpeedCPUAdam", "adam dense fused", "adam dense deepspeed", ("<=", 1.0)),
    ("", "dense Adam, fused / torch Adam(fused=True)", "adam dense fused", "adam dense torch", None),
    ("4", "SGD+EWC, spans of 10% rows / dense", "sgd rows 10%", "sgd fused", ("<=", 0.10)),
    ("4", "SGD+EWC, spans of 1% rows / dense", "sgd rows 1%", "sgd fused", ("<=", 0.015)),
    ("5", "masked SGD+EWC, C kernel / inductor", "sgd fused", "sgd compiled", ("<=", 1.0)),
    ("5", "masked Adam, C kernel / inductor", "adam fused", "adam compiled", ("<=", 1.0)),
]


SLOW_TO_BUILD = ("sgd compiled", "adam compiled", "adam dense deepspeed")  # 1-3 min each, cold


def implementations(k: Kernels, quick: bool = False) -> dict[str, tuple[base.Factory, base.Factory]]:
    """Name -> (the step timed, the step it must equal); ``quick`` leaves out the steps that
    take minutes to build on a fresh machine (inductor, DeepSpeed's CPU Adam)."""
    sgd, adam, dense = base.reference_steps().values()
    every = {
        "sgd fused": (base.fused_sgd(k), sgd),
        "sgd eager": (base.eager_sgd, sgd),
        "sgd compiled": (base.compiled_sgd, sgd),
        "sgd rows 10%": (base.fused_sgd(k, None, rows=0.1), base.fused_sgd(REFERENCE, "rows", rows=0.1)),
        "sgd rows 1%": (base.fused_sgd(k, None, rows=0.01), base.fused_sgd(REFERENCE, "rows", rows=0.01)),
        "adam fused": (base.fused_adam(k, masked=True), adam),
        "adam eager": (base.eager_adam, adam),
        "adam compiled": (base.compiled_adam, adam),
        "adam dense fused": (base.fused_adam(k, masked=False), dense),
        "adam dense deepspeed": (base.deepspeed_adam, dense),
        "adam dense torch": (base.torch_fused_adam, dense),
    }
    return {name: steps for name, steps in every.items() if not (quick and name in SLOW_TO_BUILD)}


def stream_add(pb: base.Problem) -> base.Step:
    """a += b over tensors of the problem's shapes: 12 bytes per element, in place."""
    a = [torch.zeros_like(g) for g in pb.grads]

    def step() -> None:
        for x, y in zip(a, pb.grads):
            x.add_(y)
    return step


def interleaved(steps: dict[str, Callable[[], None]], rounds: int, warmup: int,
                clock: Callable[[Callable[[], None]], float]) -> dict[str, float]:
    """Median seconds per step; each round times every step once, starting one further on."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    names, samples = list(steps), {name: [] for name in steps}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            samples[name].append(clock(steps[name]))
    return {name: statistics.median(s) for name, s in samples.items()}


_EVICT = torch.zeros(16 * 2**20)  # 64 MB, twice this machine's 32 MB L3


def cpu_clock(step: Callable[[], None]) -> float:
    """Seconds for one step that starts with none of its data in cache: a read of 64 MB
    first (untimed) evicts it, as a forward and backward pass would. Without it a step that
    follows one over the same rows finds them in L3 (the 1% rows are among the 10%)."""
    _EVICT.sum()
    started = time.perf_counter()
    step()
    return time.perf_counter() - started


def verdict(value: float, goal: Optional[tuple[str, float]]) -> str:
    if goal is None:
        return "(info)"
    op, target = goal
    return "pass" if (value <= target if op == "<=" else value >= target) else "FAIL"


def print_figures(rows: list[tuple[str, str, str, str, str]]) -> None:
    print(f"\n{'':2} {'figure':46} {'measured':>9} {'goal':>10}  result")
    for number, label, measured, goal, result in rows:
        print(f"{number:2} {label:46} {measured:>9} {goal:>10}  {result}")


def cpu_section(args: argparse.Namespace, k: Kernels) -> None:
    impls = implementations(k, args.quick)
    failures, unavailable = base.check(impls, CHECK_SHAPES)
    if failures:
        sys.exit("benchmarks/kernels.py: a step does not compute the reference's update:\n  "
                 + "\n  ".join(failures))
    shapes = QUICK_SHAPES if args.quick else SHAPES
    pb, n = base.make_problem(shapes), sum(r * c for r, c in shapes)
    steps: dict[str, base.Step] = {"add (bound)": stream_add(pb)}
    for name, (factory, _) in impls.items():
        if name not in unavailable:
            steps[name] = factory(pb)
    median = interleaved(steps, args.rounds, warmup=2, clock=cpu_clock)
    bound = BYTES["add (bound)"] * n / median["add (bound)"]

    print(f"Fused updates ({k.name}), {n:,} fp32 parameters in {len(shapes)} tensors, "
          f"{torch.get_num_threads()} threads, {args.rounds} interleaved rounds, medians")
    if k.name == "reference":
        print("note: select() returned the reference; the 'fused' rows time plain torch")
    print(f"\n{'implementation':22} {'ms':>9} {'GB/s':>7} {'of bound':>9}")
    for name in ["add (bound)", *impls]:
        if name in unavailable:
            print(f"{name:22} unavailable: {unavailable[name]}")
            continue
        family = name.rsplit(" ", 1)[0] if name != "add (bound)" else name
        per_element = BYTES.get(family) if "rows" not in name else None
        rate = per_element * n / median[name] if per_element else None
        print(f"{name:22} {median[name] * 1e3:9.2f} " + (
            f"{rate / 1e9:7.2f} {rate / bound:8.0%}" if rate else f"{'-':>7} {'-':>9}"))

    rows = []
    for number, label, top, bottom, goal in FIGURES:
        goal_text = f"{goal[0]} {goal[1]:g}x" if goal else ""
        missing = [name for name in (top, bottom) if name not in median]
        if missing:
            rows.append((number, label, "-", goal_text, f"unavailable ({missing[0]})"))
            continue
        ratio = median[top] / median[bottom]
        rows.append((number, label, f"{ratio:.3f}x", goal_text, verdict(ratio, goal)))
        if number == "1":  # the bandwidth each step achieves, for the bytes the step must move
            for name, goal_share in ((top, (">=", 0.85)), (bottom, None)):
                share = BYTES["sgd"] * n / median[name] / bound
                rows.append(("1", f"{name}: bandwidth, of the bound", f"{share:.1%}",
                             ">= 85%" if goal_share else "", verdict(share, goal_share)))
    print_figures(rows)
    print(f"\nbound: in-place add, {bound / 1e9:.2f} GB/s. Checked against the reference: "
          f"{len(impls) - len(unavailable)} of {len(impls)} steps (the rest unavailable here).")
    faster = [f"{family}: " + ("C kernel" if median[f"{family} fused"] <= median[f"{family} compiled"]
                               else "inductor")
              for family in ("sgd", "adam") if f"{family} compiled" in median]
    if faster and k.name == "cpu":
        print("CPU implementation measured faster -- " + ", ".join(faster))


def gpu_section(args: argparse.Namespace) -> None:
    device = torch.device("cuda")
    k = select(device)
    n = 1_000_000 if args.quick else args.gpu_elements
    gen = torch.Generator(device).manual_seed(0)
    p, g, m = (torch.randn(n, device=device, generator=gen) for _ in range(3))
    v = torch.rand(n, device=device, generator=gen)
    ours = base.Problem(shapes=[(n, 1)], params=[p], grads=[g], bufs=[], curvature=[], offset=[],
                        exp_avg=[m], exp_avg_sq=[v], masks=[], keep=[])
    theirs = base.clone(ours)
    a, b = torch.zeros_like(g), torch.randn_like(g)
    steps = {"add (bound)": lambda: a.add_(b), "triton adam": base.fused_adam(k, masked=False)(ours),
             "torch adam fused": base.torch_fused_adam(theirs)}
    reps = 10

    def gpu_clock(step: Callable[[], None]) -> float:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            step()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / reps

    median = interleaved(steps, args.rounds, warmup=3, clock=gpu_clock)
    bound = BYTES["add (bound)"] * n / median["add (bound)"]
    share = BYTES["adam dense"] * n / median["triton adam"] / bound
    ratio = median["triton adam"] / median["torch adam fused"]
    print(f"\nGPU: {torch.cuda.get_device_name()}, dense Adam on one flat tensor of {n:,} fp32, "
          f"kernels {k.name}, {reps} steps per timing; in-place add {bound / 1e9:.0f} GB/s")
    print_figures([("6", "Triton Adam: bandwidth, of the in-place add's", f"{share:.1%}", ">= 80%",
                    verdict(share, (">=", 0.80))),
                   ("6", "Triton Adam / torch Adam(fused=True)", f"{ratio:.3f}x", "< 1x",
                    verdict(ratio, ("<=", 0.999)))])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--gpu-elements", type=int, default=100_000_000)
    parser.add_argument("--quick", action="store_true",
                        help="tiny tensors, 2 rounds, no inductor or DeepSpeed CPU Adam builds: a smoke test")
    args = parser.parse_args()
    if os.environ.get("OMP_NUM_THREADS") != str(args.threads):
        # DeepSpeed's extension (and a C kernel) bring their own OpenMP runtime, which reads
        # OMP_NUM_THREADS when it loads: restart once with it set, so all use the same threads.
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
        os.execv(sys.executable, [sys.executable, *sys.argv])
    if args.quick:
        args.rounds = 2
    torch.set_num_threads(args.threads)
    cpu_section(args, select(torch.device("cpu")))
    if torch.cuda.is_available():
        gpu_section(args)
    else:
        print("\nGPU (figure 6): no CUDA device here; the Triton figures are measured on a GPU machine.")


if __name__ == "__main__":
    main()
