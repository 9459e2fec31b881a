"""How much does the platform cost? `lifelong run` vs a hand-written torch loop.

Runs the default experiment (configs/permuted_mnist_ewc.yaml) through the real path
(embedded Ray, a Ray Train worker, the DeepSpeed engine, MLflow SQLite), then the
same math by hand in this process: same data, permutations, init, batches, Adam,
EWC penalty gradient, per-row Fisher, evaluation. Both use the same number of
threads. Prints ratios measured in this one run (the machine is noisy), plus the
platform's start-up time before its first optimizer step.

    .venv/bin/python benchmarks/overhead_vs_plain_loop.py [key=value overrides]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from mlflow.tracking import MlflowClient
from torch import nn
from torch.func import functional_call, grad, vmap

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lifelong.platform.config import RunConfig, load_config  # noqa: E402
from lifelong.streams.batches import epoch_seed  # noqa: E402
from lifelong.streams.registry import build_stream  # noqa: E402


def hand_written(cfg: RunConfig, threads: int) -> dict:
    """The experiment as one would write it without a platform."""
    torch.set_num_threads(threads)
    torch.manual_seed(cfg.seed)
    stream = build_stream(cfg.stream, cfg.seed)  # data prep, not timed in either run
    scale, shift = 1.0 / (stream.max_value * stream.std), stream.mean / stream.std
    sizes = [stream.input_dim, *cfg.model.hidden, stream.n_outputs]
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    model = nn.Sequential(*layers[:-1])
    opt = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr)
    lam, bs = cfg.strategy.lam, cfg.train.batch_size  # type: ignore[attr-defined]
    S: dict[str, torch.Tensor] = {}
    A: dict[str, torch.Tensor] = {}

    def feats(x: torch.Tensor, perm: torch.Tensor | None) -> torch.Tensor:
        return (x if perm is None else x[:, perm]).float().mul_(scale).sub_(shift)

    def evaluate() -> list[float]:
        with torch.no_grad():
            return [float((model(feats(t.test.x, t.permutation)).argmax(1) == t.test.y).float().mean())
                    for t in stream.tasks]

    train_s = boundary_s = 0.0
    R = []
    init = evaluate()
    for task in stream.tasks:
        x, y = task.train.x, task.train.y
        started = time.perf_counter()
        for epoch in range(cfg.train.epochs):
            g = torch.Generator().manual_seed(epoch_seed(cfg.seed, task.index, epoch))
            order = torch.randperm(len(y), generator=g)
            for b in range(len(y) // bs):
                idx = order[b * bs:(b + 1) * bs]
                loss = F.cross_entropy(model(feats(x[idx], task.permutation)), y[idx])
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
        keep = keep[:cfg.strategy.fisher_samples].sort().values  # type: ignore[attr-defined]
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


def platform(cfg: RunConfig, workdir: Path) -> dict:
    import os

    from lifelong.platform.driver import run

    here = os.getcwd()
    os.chdir(workdir)
    try:
        outcome = run(cfg, progress=False)
    finally:
        os.chdir(here)
    m = MlflowClient(outcome.tracking_uri).get_run(outcome.run_id).data.metrics
    return {"train": m["time/train_seconds"], "boundary": m["time/boundary_seconds"],
            "startup": m["time/startup_seconds"], "total": m["time/total_seconds"], "R": outcome.R}


def main() -> None:
    args = sys.argv[1:]
    repeats = 2
    if args and args[0].startswith("--repeats="):
        repeats, args = int(args[0].split("=")[1]), args[1:]
    cfg = load_config(ROOT / "configs/permuted_mnist_ewc.yaml", args)
    ours_runs, hand_runs = [], []
    # One working directory for every run: Ray's workers keep the cwd Ray started in.
    workdir = tempfile.TemporaryDirectory()
    for _ in range(repeats):  # interleaved, so slow spells of a noisy machine hit both
        ours_runs.append(platform(cfg, Path(workdir.name)))
        import ray

        threads = int(ray.cluster_resources().get("CPU", 2)) // cfg.engine.workers
        hand_runs.append(hand_written(cfg, threads))
    best = {k: min(r[k] for r in ours_runs) for k in ("train", "boundary")}
    hand = {k: min(r[k] for r in hand_runs) for k in ("train", "boundary")}
    drift = max(abs(a - b) for ra, rb in zip(ours_runs[0]["R"], hand_runs[0]["R"]) for a, b in zip(ra, rb))
    print(f"\ndefault experiment: {cfg.stream.scenario} {cfg.stream.dataset}, {cfg.stream.n_tasks} tasks, "
          f"strategy {cfg.strategy.name}, {cfg.engine.backend} ZeRO-{cfg.engine.zero_stage}, "
          f"{threads} threads; best of {repeats} interleaved runs each")
    print(f"{'':26s}{'lifelong run':>14s}{'hand loop':>12s}{'ratio':>8s}   all runs (ours | hand)")
    for key, label in (("train", "training steps (s)"), ("boundary", "task boundaries (s)")):
        runs = " ".join(f"{r[key]:.1f}" for r in ours_runs) + " | " + " ".join(f"{r[key]:.1f}" for r in hand_runs)
        print(f"{label:26s}{best[key]:14.2f}{hand[key]:12.2f}{best[key] / hand[key]:8.3f}   {runs}")
    b_ours, b_hand = best["train"] + best["boundary"], hand["train"] + hand["boundary"]
    print(f"{'training, all (s)':26s}{b_ours:14.2f}{b_hand:12.2f}{b_ours / b_hand:8.3f}")
    print(f"start-up before first step: {ours_runs[0]['startup']:.1f} s cold, "
          f"{min(r['startup'] for r in ours_runs[1:]) if repeats > 1 else float('nan'):.1f} s with Ray up")
    print(f"whole `lifelong run`: {ours_runs[0]['total']:.1f} s;  max |R difference| vs hand loop: {drift:.4f}")


if __name__ == "__main__":
    main()
