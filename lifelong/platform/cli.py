"""The ``lifelong`` command: run, submit, strategies, data fetch."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from rich.console import Console
from rich.table import Table

from lifelong.platform.errors import ConfigError, LifelongError


def main(argv: Optional[Sequence[str]] = None) -> int:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except LifelongError as err:
        print(f"lifelong: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("lifelong: interrupted", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lifelong", description="Distributed continual learning.")
    sub = parser.add_subparsers(dest="command")

    run = sub.add_parser("run", help="run an experiment: CONFIG.yaml [key=value ...], or go on "
                                     "with a stopped one: --resume RUN_ID [key=value ...]")
    run.add_argument("args", nargs="*", metavar="CONFIG [key=value ...]",
                     help="YAML experiment file (see configs/), then dotted overrides, e.g. "
                          "strategy.lam=50 (with --resume: overrides only)")
    run.add_argument("--resume", metavar="RUN_ID", help="continue this run from its latest "
                     "task-boundary checkpoint, into the same MLflow run, with its own config")
    run.add_argument("--no-progress", action="store_true", help="no live progress bars")
    run.set_defaults(handler=_run)

    submit = sub.add_parser("submit", help="run an experiment as a Ray job on a cluster: "
                                           "CONFIG.yaml [key=value ...] --address URL")
    submit.add_argument("config", help="YAML experiment file, inside the directory to upload (the cwd)")
    submit.add_argument("overrides", nargs="*", help="dotted overrides, e.g. strategy.lam=50")
    submit.add_argument("--address", default=os.environ.get("RAY_ADDRESS") or "http://127.0.0.1:8265",
                        help="the cluster's dashboard (default: $RAY_ADDRESS or http://127.0.0.1:8265)")
    submit.add_argument("--no-follow", action="store_true", help="submit and return; do not stream logs")
    submit.set_defaults(handler=_submit)

    strategies = sub.add_parser("strategies", help="list registered strategies")
    strategies.set_defaults(handler=_strategies)

    data = sub.add_parser("data", help="manage the local data cache")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    fetch = data_sub.add_parser("fetch", help="fetch and verify data sets into the cache")
    fetch.add_argument("names", nargs="+", help="mnist, fashion_mnist, digits")
    fetch.set_defaults(handler=_fetch)
    return parser


def _run(args: argparse.Namespace) -> int:
    from lifelong.platform.config import load_config
    from lifelong.platform.driver import resume, run

    console = Console()
    if args.resume:
        if args.args and "=" not in args.args[0]:
            raise ConfigError(f"--resume uses the run's own config; drop {args.args[0]!r}")
        outcome = resume(args.resume, args.args, console=console, progress=not args.no_progress)
    else:
        if not args.args or "=" in args.args[0]:
            raise ConfigError("lifelong run needs a config file first: lifelong run CONFIG.yaml [key=value ...]")
        cfg = load_config(args.args[0], args.args[1:])
        outcome = run(cfg, console=console, progress=not args.no_progress)
    from lifelong.platform import summary

    console.print(summary.render(outcome.R, outcome.init, console.width))
    from lifelong.metrics import summarize

    if outcome.R:
        s = summarize(outcome.R, outcome.init)
        console.print("  ".join(f"[bold]{k.upper()}[/] {v:+.4f}" if k != "acc" else f"[bold]ACC[/] {v:.4f}"
                                for k, v in s.items()))
    console.print(f"run {outcome.run_id} finished in {outcome.seconds:.1f}s. See it in the MLflow UI:")
    console.print(f"  mlflow ui --backend-store-uri {_ui_uri(outcome.tracking_uri)}", soft_wrap=True)
    return 0


def _submit(args: argparse.Namespace) -> int:
    from lifelong.platform.submit import submit

    status = submit(args.config, args.overrides, args.address, follow=not args.no_follow)
    return 0 if args.no_follow or status == "SUCCEEDED" else 1


def _ui_uri(uri: str) -> str:
    prefix = "sqlite:///"
    if uri.startswith(prefix) and uri[len(prefix):].startswith(os.getcwd() + "/"):
        return prefix + os.path.relpath(uri[len(prefix):])
    return uri


def _strategies(_: argparse.Namespace) -> int:
    from lifelong.strategies.registry import available

    table = Table(title="strategies (use as strategy.name=NAME)")
    for column in ("name", "description", "options", "proven ZeRO stages"):
        table.add_column(column)
    for name, cls in sorted(available().items()):
        fields = [f for f in cls.Config.__dataclass_fields__ if f != "name"]
        stages = ",".join(str(s) for s in sorted(cls.support.zero_stages))
        workers = "" if cls.support.multi_worker else " (1 worker)"
        table.add_row(name, cls.description, ", ".join(fields) or "-", stages + workers)
    Console().print(table)
    return 0


def _fetch(args: argparse.Namespace) -> int:
    from lifelong.streams.fetch import fetch

    for name in args.names:
        fetch(name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
