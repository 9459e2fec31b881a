"""How much does the platform cost? `lifelong run` vs the loop a user writes by hand.

The workload of issue 9: configs/permuted_mnist_ewc.yaml (5 Permuted MNIST tasks of 60k
rows, MLP 784-400-400-10, EWC separate) with SGD lr 0.01, momentum 0.9, batch 128, one
epoch; after each task, all 5 full test sets. Interleaved rounds, each:

- ``lifelong run`` as a user types it: a fresh process, its own local Ray (cold), a learner
  process with the DeepSpeed engine, MLflow SQLite, checkpoints, plots;
- the textbook loop (benchmarks/textbook_loop.py) as its own process: plain torch, the EWC
  penalty through autograd, the Fisher as squared mean-batch gradients over the task;
- the same math as ours by hand in this process (penalty gradient added directly,
  per-row Fisher on 1,024 rows): the earlier reference, kept for comparison.

Prints medians, ratios against the textbook loop measured in this one run (the machine is
noisy), time to the first optimizer step and from the last task to exit.

    .venv/bin/python benchmarks/overhead_vs_plain_loop.py [--repeats=3] [key=value overrides]
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from mlflow.tracking import MlflowClient
from torch.func import functional_call, grad, vmap

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lifelong.platform.config import RunConfig, load_config  # noqa: E402
from lifelong.platform.tracking import read_matrix  # noqa: E402
from textbook_loop import hand_setup  # noqa: E402


def hand_written(cfg: RunConfig, threads: int) -> dict:
    """The experiment as one would write it without a platform."""
    hand = hand_setup(cfg, threads)
    stream, model, opt, feats, evaluate = hand.stream, hand.model, hand.opt, hand.feats, hand.evaluate
    lam = cfg.strategy.lam  # type: ignore[attr-defined]
    S: dict[str, torch.Tensor] = {}
    A: dict[str, torch.Tensor] = {}

    train_s = boundary_s = 0.0
    R = []
    init = evaluate()
    for task in stream.tasks:
        x, y = task.train.x, task.train.y
        started = time.perf_counter()
        for xb, yb in hand.batches(cfg, task):
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if S:
                with torch.no_grad():
                    for n, p in model.named_parameters():
                        p.grad.add_(S[n] * p - A[n], alpha=lam)
            opt.step()
        train_s += time.perf_counter() - started
        started = time.perf_counter()
        keep = torch.randperm(len(y), generator=torch.Generator().manual_seed(task.index))
        keep = keep[:1024].sort().values  # a per-row gradient each: a subset, as it always used
        params = {n: p.detach() for n, p in model.named_parameters()}

        def row_loss(p, xr, yr):  # type: ignore[no-untyped-def]
            return F.cross_entropy(functional_call(model, p, (xr[None],)), yr[None])

        fisher = {n: torch.zeros_like(p) for n, p in params.items()}
        xf, yf = feats(x[keep], task.permutation), y[keep]
        fb = cfg.strategy.fisher_batch_size  # type: ignore[attr-defined]
        for i in range(0, len(yf), fb):
            for n, gr in vmap(grad(row_loss), in_dims=(None, 0, 0))(params, xf[i:i + fb], yf[i:i + fb]).items():
                fisher[n] += gr.pow(2).sum(0)
        for n in fisher:
            fisher[n] /= len(yf)
            S[n] = S.get(n, 0) + fisher[n]
            A[n] = A.get(n, 0) + fisher[n] * params[n]
        R.append(evaluate())
        boundary_s += time.perf_counter() - started
    return {"train": train_s, "boundary": boundary_s, "R": R, "init": init}


WORKLOAD = ["optim.name=sgd", "optim.lr=0.01", "optim.momentum=0.9", "optim.weight_decay=0"]
CONFIG = ROOT / "configs/permuted_mnist_ewc.yaml"
BIN = Path(sys.executable).parent


def user_env() -> dict[str, str]:
    """The environment a user has: no PYTHONPATH, no RAY_ADDRESS."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RAY_ADDRESS")}


def ours(args: list[str], workdir: Path) -> dict:
    """`lifelong run` in a fresh process; phases from the run's time/* metrics."""
    started = time.time()
    out = subprocess.run([str(BIN / "lifelong"), "run", str(CONFIG), *args, "--no-progress"],
                         cwd=workdir, env=user_env(), capture_output=True, text=True)
    wall = time.time() - started
    if out.returncode != 0:
        raise SystemExit(f"lifelong run failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    client = MlflowClient(f"sqlite:///{workdir / 'mlruns.db'}")
    (run_,) = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                 order_by=["attributes.start_time DESC"], max_results=1)
    m = run_.data.metrics
    return {"train": m["time/train_seconds"], "boundary": m["time/boundary_seconds"],
            "first_step": m["time/startup_seconds"], "process": wall,
            "exit": wall - m["time/total_seconds"], "ray": m["time/ray_ready_seconds"],
            "worker": m["time/worker_started_seconds"], "built": m["time/learner_built_seconds"],
            "phases": {k.removeprefix("time/boundary_").removesuffix("_seconds"): v
                       for k, v in m.items() if k.startswith("time/boundary_") and k != "time/boundary_seconds"},
            "console": out.stdout + out.stderr,
            "R": read_matrix(f"sqlite:///{workdir / 'mlruns.db'}", run_.info.run_id)["R"]}


def textbook(args: list[str], threads: int) -> dict:
    started = time.time()
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks/textbook_loop.py"), str(CONFIG), *args],
                         env={**user_env(), "THREADS": str(threads), "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["process"] = time.time() - started
    result["exit"] = result["process"] - result["last_task_done"]
    return result


def main() -> None:
    args = sys.argv[1:]
    repeats = 3
    if args and args[0].startswith("--repeats="):
        repeats, args = int(args[0].split("=")[1]), args[1:]
    args = WORKLOAD + args
    cfg = load_config(CONFIG, args)
    threads = os.cpu_count() or 2
    runs: dict[str, list[dict]] = {"ours": [], "textbook": [], "same_math": []}
    with tempfile.TemporaryDirectory() as workdir:
        for _ in range(repeats):  # interleaved, so slow spells of a noisy machine hit all three
            runs["ours"].append(ours(args, Path(workdir)))
            runs["textbook"].append(textbook(args, threads))
            runs["same_math"].append(hand_written(cfg, threads))
    med = {name: {k: statistics.median(r[k] for r in rs) for k in ("train", "boundary")}
           for name, rs in runs.items()}
    print(f"\nworkload: {cfg.stream.scenario} {cfg.stream.dataset}, {cfg.stream.n_tasks} tasks, "
          f"strategy {cfg.strategy.name}, {cfg.optim.name} lr {cfg.optim.lr} momentum "
          f"{cfg.optim.momentum}, {threads} threads; medians of {repeats} interleaved rounds")
    print(f"{'':30s}{'lifelong run':>13s}{'textbook':>10s}{'ratio':>7s}{'same math':>11s}   runs (ours | textbook)")
    rows = [("train", "training steps (s)"), ("boundary", "task boundaries (s)")]
    for key, label in rows:
        all_runs = (" ".join(f"{r[key]:.1f}" for r in runs["ours"]) + " | "
                    + " ".join(f"{r[key]:.1f}" for r in runs["textbook"]))
        o, t = med["ours"][key], med["textbook"][key]
        print(f"{label:30s}{o:13.2f}{t:10.2f}{o / t:7.2f}{med['same_math'][key]:11.2f}   {all_runs}")
    o_all = med["ours"]["train"] + med["ours"]["boundary"]
    t_all = med["textbook"]["train"] + med["textbook"]["boundary"]
    print(f"{'all training work (s)':30s}{o_all:13.2f}{t_all:10.2f}{o_all / t_all:7.2f}")
    o_p = statistics.median(r["process"] for r in runs["ours"])
    t_p = statistics.median(r["process"] for r in runs["textbook"])
    print(f"{'the whole process (s)':30s}{o_p:13.2f}{t_p:10.2f}{o_p / t_p:7.2f}   "
          + " ".join(f"{r['process']:.1f}" for r in runs["ours"]) + " | "
          + " ".join(f"{r['process']:.1f}" for r in runs["textbook"]))
    for key, label in (("first_step", "first optimizer step after start (s)"),
                       ("exit", "exit after the last task (s)")):
        print(f"{label:42s}{statistics.median(r[key] for r in runs['ours']):6.2f}   (textbook "
              f"{statistics.median(r[key] for r in runs['textbook']):.2f}; ours per round: "
              + " ".join(f"{r[key]:.1f}" for r in runs["ours"]) + ")")
    print("start-up of `lifelong run` (s since the command began, median): "
          + ", ".join(f"{label} {statistics.median(r[k] for r in runs['ours']):.1f}" for k, label in
                      (("ray", "Ray ready"), ("worker", "learner process running"),
                       ("built", "learner built"), ("first_step", "first step"))))
    phases = runs["ours"][0]["phases"]
    print("boundary phases, first round (s): " + ", ".join(f"{k} {v:.2f}" for k, v in sorted(phases.items())))
    acc = {name: statistics.median(sum(r["R"][-1]) / len(r["R"][-1]) for r in rs) for name, rs in runs.items()}
    print("final ACC (median): " + ", ".join(f"{k} {v:.4f}" for k, v in acc.items())
          + "  (the textbook Fisher is an approximation, so its matrix differs)")
    print("console of the first `lifelong run`:\n" + runs["ours"][0]["console"])


if __name__ == "__main__":
    main()
