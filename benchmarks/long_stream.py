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
    .venv/bin/python benchmarks/long_stream.py --reference backprop strategy.name=naive optim.weight_decay=0

``--reference backprop|cbp`` compares the run with the one docs/plasticity.md reports
(same config and seed, the code before issue 9): its new-task accuracies R[i][i], saved in
docs/images/loss_of_plasticity.json, must come out the same, and its wall time (649 s for
backprop, of which 386 s were boundaries) is the "before" of the speed-up.

Extra arguments are config overrides. Note that a shortened stream has shorter boundaries
(30 test sets, not 300), so its boundary share is not the full run's.
"""

from __future__ import annotations

import argparse

import json

from _runs import ROOT, measured_run, scratch_cwd

CONFIG = "online_permuted_mnist_cbp.yaml"
BEFORE_SECONDS = {"backprop": 649.0}  # docs/plasticity.md's run of this config, before issue 9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=None, help="shorten to this many tasks")
    parser.add_argument("--reference", choices=("backprop", "cbp"), help="compare with the run "
                        "docs/plasticity.md reports (the full stream, seed 0)")
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
    if args.reference:
        saved = json.loads((ROOT / "docs/images/loss_of_plasticity.json").read_text())[args.reference]["test"]
        diagonal = [round(outcome.R[i][i], 2) for i in range(len(outcome.R))]
        diff = max(abs(a - b) for a, b in zip(diagonal, saved))
        print(f"{'R[i][i] vs the saved run':32s}{diff:9.4f} max |difference| over {len(saved)} tasks")
        if args.reference in BEFORE_SECONDS:
            before = BEFORE_SECONDS[args.reference]
            print(f"{'speed-up end to end':32s}{before / wall:9.2f}x  ({before:.0f} s before)")


if __name__ == "__main__":
    main()
