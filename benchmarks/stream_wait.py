"""How long learners wait on the stream actor (goal: < 5% of training time).

Runs the default experiment, shortened to 2 full tasks of Permuted MNIST (60,000 rows
each), through the real path: the stream actor serves every batch. Each learner times how
long it sits blocked waiting for the next chunk (``stream/wait_seconds``) against its
training time (optimizer steps including those waits). Three setups in one process:
the defaults (chunks of 16 batches, 4 in flight), no prefetch (1 batch per request, 1 in
flight: every step waits for a round trip), and 2 workers with the defaults.

    .venv/bin/python benchmarks/stream_wait.py [key=value overrides]
"""

from __future__ import annotations

import sys

from _runs import measured_run, scratch_cwd

SHORT = ["stream.n_tasks=2", "stream.test_samples_per_task=2000"]
SETUPS = {
    "1 worker, defaults (16 x 4)": [],
    "1 worker, no prefetch (1 x 1)": ["stream.chunk_batches=1", "stream.prefetch=1"],
    "2 workers, defaults (16 x 4)": ["engine.workers=2"],
}


def main() -> None:
    got = {}
    with scratch_cwd():
        for name, extra in SETUPS.items():
            _, _, m = measured_run("permuted_mnist_ewc.yaml", SHORT + extra + sys.argv[1:])
            got[name] = m
    print(f"\n{'':32s}{'steps':>7s}{'train s':>9s}{'waiting s':>11s}{'waiting':>9s}")
    for name, m in got.items():
        print(f"{name:32s}{m['time/steps']:7.0f}{m['time/train_seconds']:9.1f}"
              f"{m['stream/wait_seconds']:11.2f}{100 * m['stream/wait_fraction']:8.1f}%")
    print("waiting = time rank 0 sat blocked on the stream actor / its training time (goal < 5%)")


if __name__ == "__main__":
    main()
