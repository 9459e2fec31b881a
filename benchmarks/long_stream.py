"""Long streams: how much of a run its task boundaries take (goal: <= 15% of the wall time),
and how long the learner waits on the stream at batch 16 (goal: <= 2% of training).

Runs configs/online_permuted_mnist_cbp.yaml (300 tasks of 6,000 rows, batch 16, every
boundary evaluating all 300 test sets of 200 rows and checkpointing) through the real
path: `lifelong run`'s driver, Ray Train, the stream actor, MLflow. Reads back the run's
own timing metrics: `time/boundary_seconds` (strategy hooks, evaluation, tracking,
checkpoint) and `time/train_seconds` (optimizer steps, including stream waits), and
`stream/wait_fraction`.

    .venv/bin/python benchmarks/long_stream.py                 # the full 300 tasks (~10 min)
    .venv/bin/python benchmarks/long_stream.py --tasks 30      # shortened
    .venv/bin/python benchmarks/long_stream.py --tasks 30 eval.tasks=seen eval.every=10
    .venv/bin/python benchmarks/long_stream.py --before 649 strategy.name=naive optim.weight_decay=0

``--before`` prints the speed-up over an earlier wall time of the same run: the backprop run
docs/plasticity.md reported before issue 9 took 649 s, 386 s of them at task boundaries.

Extra arguments are config overrides. Note that a shortened stream has shorter boundaries
(30 test sets, not 300), so its boundary share is not the full run's.
"""

from __future__ import annotations

import argparse

from _runs import measured_run, scratch_cwd

CONFIG = "online_permuted_mnist_cbp.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=None, help="shorten to this many tasks")
    parser.add_argument("--before", type=float, help="the same run's wall time before (seconds): "
                        "docs/plasticity.md's backprop run took 649 s")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. eval.every=10")
    args = parser.parse_args()
    overrides = ([f"stream.n_tasks={args.tasks}"] if args.tasks else []) + args.overrides
    with scratch_cwd():
        cfg, outcome, m = measured_run(CONFIG, overrides + ["tracking.experiment=long-stream"])
    wall = outcome.seconds
    boundary, train = m["time/boundary_seconds"], m["time/train_seconds"]
    print(f"\n{CONFIG}: {cfg.stream.n_tasks} tasks, batch {cfg.train.batch_size}, "
          f"{m['time/steps']:.0f} steps, eval.tasks={cfg.eval.tasks} eval.every={cfg.eval.every} "
          f"engine.checkpoint_every={cfg.engine.checkpoint_every}")
    print(f"{'wall time (lifelong run)':32s}{wall:9.1f} s")
    print(f"{'training (steps + stream waits)':32s}{train:9.1f} s")
    print(f"{'task boundaries':32s}{boundary:9.1f} s  {100 * boundary / wall:5.1f}% of wall (goal <= 15%)")
    print(f"{'  per boundary':32s}{boundary / cfg.stream.n_tasks:9.3f} s")
    print(f"{'waiting on the stream':32s}{m['stream/wait_seconds']:9.1f} s  "
          f"{100 * m['stream/wait_fraction']:5.1f}% of training (goal <= 2%)")
    print(f"{'final ACC':32s}{m.get('cl/acc', float('nan')):9.4f}")
    phases = {k.removeprefix("time/boundary_").removesuffix("_seconds"): v for k, v in m.items()
              if k.startswith("time/boundary_") and k != "time/boundary_seconds"}
    print(f"{'  by phase':32s}" + ", ".join(f"{k} {v:.1f} s" for k, v in sorted(phases.items())))
    if args.before:
        print(f"{'speed-up end to end':32s}{args.before / wall:9.2f}x  ({args.before:.0f} s before)")


if __name__ == "__main__":
    main()
