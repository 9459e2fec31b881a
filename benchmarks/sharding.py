"""What sharding buys and costs here: optimizer state per worker and throughput.

Three `lifelong run`s of the default experiment (shortened: 2 tasks of 20,000 rows, Adam
so the state is 2 floats per parameter), through the real path, in one process:
1 worker ZeRO-0, 2 workers ZeRO-0, 2 workers ZeRO-2. Prints per-worker optimizer-state
bytes (ZeRO-2 / ZeRO-0, expect about 0.5) and training throughput (rows per second of
optimizer steps) of 2 workers relative to 1.

    .venv/bin/python benchmarks/sharding.py [key=value overrides]
"""

from __future__ import annotations

import sys

from _runs import measured_run, scratch_cwd

SHORT = ["stream.n_tasks=2", "stream.train_samples_per_task=20000", "stream.test_samples_per_task=2000"]
SETUPS = {"1 worker, ZeRO-0": (1, 0), "2 workers, ZeRO-0": (2, 0), "2 workers, ZeRO-2": (2, 2)}


def measure(workers: int, stage: int, extra: list[str]) -> dict[str, float]:
    overrides = SHORT + [f"engine.workers={workers}", f"engine.zero_stage={stage}"] + extra
    cfg, outcome, m = measured_run("permuted_mnist_ewc.yaml", overrides)
    rows = m["time/steps"] * cfg.train.batch_size  # global batch: each step covers batch_size rows
    return {"state": m["memory/optimizer_state_bytes_per_worker"], "train": m["time/train_seconds"],
            "rows_per_s": rows / m["time/train_seconds"], "R": outcome.R}


def main() -> None:
    with scratch_cwd():
        got = {name: measure(w, s, sys.argv[1:]) for name, (w, s) in SETUPS.items()}
    base = got["1 worker, ZeRO-0"]
    print(f"\n{'':22s}{'opt. state / worker':>20s}{'train s':>9s}{'rows/s':>9s}{'vs 1 worker':>13s}")
    for name, g in got.items():
        print(f"{name:22s}{g['state'] / 2**20:17.2f} MiB{g['train']:9.1f}{g['rows_per_s']:9.0f}"
              f"{g['rows_per_s'] / base['rows_per_s']:13.2f}")
    print(f"optimizer state per worker, ZeRO-2 / ZeRO-0 (2 workers): "
          f"{got['2 workers, ZeRO-2']['state'] / got['2 workers, ZeRO-0']['state']:.3f}")
    same = max(abs(a - b) for name in got for ra, rb in zip(base["R"], got[name]["R"]) for a, b in zip(ra, rb))
    print(f"max |R difference| across the three runs: {same:.4f} (same steps, sharded)")


if __name__ == "__main__":
    main()
