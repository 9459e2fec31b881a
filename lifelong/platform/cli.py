"""The ``lifelong`` command: run, submit, ui, strategies, data fetch."""

from __future__ import annotations

import argparse
import logging
import time
import os
import sys
from typing import Optional, Sequence

from rich.console import Console
from rich.table import Table

from lifelong.platform.errors import ConfigError, LifelongError


def main(argv: Optional[Sequence[str]] = None) -> int:
    started_at = time.time()  # a run's time/* metrics count from here, imports included
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    parser = _parser()
    args = parse(parser, sys.argv[1:] if argv is None else list(argv))
    args.started_at = started_at
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


INTERMIXED = ("run", "submit")  # commands whose flags and key=value overrides mix freely


def parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Like ``parser.parse_args``, but ``run`` and ``submit`` take flags anywhere among the
    overrides (``CONFIG --no-progress k=v`` as well as ``CONFIG k=v --no-progress``).
    argparse's intermixed parsing does not work through subparsers, so the command's own
    parser is used for the rest of the line."""
    command = next((i for i, a in enumerate(argv) if not a.startswith("-")), None)
    if command is None or command > 0 or argv[command] not in INTERMIXED:
        return parser.parse_args(argv)
    sub = _subparsers(parser).choices[argv[command]]
    args = sub.parse_intermixed_args(argv[command + 1:])
    args.command = argv[command]
    return args


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))


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
    run.add_argument("-v", "--verbose", action="store_true", help="show Ray's, DeepSpeed's and "
                     "MLflow's own output live (always kept in .lifelong/logs/RUN_ID.log)")
    run.set_defaults(handler=_run)

    submit = sub.add_parser("submit", help="run an experiment as a Ray job on a cluster: "
                                           "CONFIG.yaml [key=value ...] --address URL")
    submit.add_argument("config", help="YAML experiment file, inside the directory to upload (the cwd)")
    submit.add_argument("overrides", nargs="*", help="dotted overrides, e.g. strategy.lam=50")
    submit.add_argument("--address", default=os.environ.get("RAY_ADDRESS") or "http://127.0.0.1:8265",
                        help="the cluster's dashboard (default: $RAY_ADDRESS or http://127.0.0.1:8265)")
    submit.add_argument("--no-follow", action="store_true", help="submit and return; do not stream logs")
    submit.set_defaults(handler=_submit)

    ui = sub.add_parser("ui", help="start the MLflow UI on this directory's runs and print "
                                   "links to the newest run (or RUN_ID) and its experiment")
    ui.add_argument("run_id", nargs="?", metavar="RUN_ID", help="link to this run (default: the newest)")
    ui.add_argument("--uri", default="sqlite:///mlruns.db", help="tracking store (default: "
                    "sqlite:///mlruns.db, as lifelong run writes it); an http(s) server: links only")
    ui.add_argument("--host", default="127.0.0.1", help="address to serve on (default: 127.0.0.1)")
    ui.add_argument("--port", type=int, default=5000, help="port to serve on (default: 5000)")
    ui.set_defaults(handler=_ui)

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
        outcome = resume(args.resume, args.args, console=console, progress=not args.no_progress,
                         verbose=args.verbose, redirect_fd=True, started_at=args.started_at)
    else:
        if not args.args or "=" in args.args[0]:
            raise ConfigError("lifelong run needs a config file first: lifelong run CONFIG.yaml [key=value ...]")
        cfg = load_config(args.args[0], args.args[1:])
        outcome = run(cfg, console=console, progress=not args.no_progress, verbose=args.verbose,
                      redirect_fd=True, started_at=args.started_at)
    from lifelong.platform import summary

    console.print(summary.render(outcome.R, outcome.init, console.width))
    from lifelong.metrics import summarize

    if outcome.R:
        s = summarize(outcome.R, outcome.init)
        console.print("  ".join(f"[bold]{k.upper()}[/] {v:+.4f}" if k != "acc" else f"[bold]ACC[/] {v:.4f}"
                                for k, v in s.items()))
    console.print(f"run {outcome.run_id} finished in {outcome.seconds:.1f}s.")
    from lifelong.platform.ui import print_where_to_look

    print_where_to_look(console, outcome.tracking_uri, outcome.run_id)
    _stop_ray()
    return 0


def _stop_ray() -> None:
    """Stop the run's own local Ray (or leave a joined cluster) now, once the results are on
    the screen: Ray's exit hook would first sleep half a second for log lines we no longer
    print, and shutting down in the foreground keeps the command's exit prompt."""
    import ray

    if ray.is_initialized():
        ray.shutdown()


def _submit(args: argparse.Namespace) -> int:
    from lifelong.platform.submit import submit

    status = submit(args.config, args.overrides, args.address, follow=not args.no_follow)
    return 0 if args.no_follow or status == "SUCCEEDED" else 1


def _ui(args: argparse.Namespace) -> int:
    from pathlib import Path

    from lifelong.platform.tracking import resolve_uri
    from lifelong.platform.ui import serve

    return serve(resolve_uri(args.uri, Path.cwd()), args.run_id, args.host, args.port, Console())


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


def entry() -> None:
    """The ``lifelong`` command. Once a command is done (output flushed, Ray stopped, the run
    ended in MLflow), the interpreter's own teardown of torch, Ray and MLflow modules took
    over a second more; it has nothing left to save, so the process exits at once."""
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


if __name__ == "__main__":
    entry()
