"""Live progress in the driver's terminal, fed by rank 0 through a tiny Ray actor.

Rich bars cannot render inside a Ray worker (no TTY, prefixed log lines), so the
learner pushes small events to a ``ProgressBoard`` and the driver draws them.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

import ray
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


@ray.remote(num_cpus=0)
class ProgressBoard:
    def __init__(self) -> None:
        self.events: list[dict] = []

    def push(self, event: dict) -> None:
        self.events.append(event)

    def drain(self) -> list[dict]:
        out, self.events = self.events, []
        return out


def run_with_progress(work: Callable[[], Any], board: Any, console: Console) -> Any:
    """Run ``work`` in a thread while drawing the board's events; re-raise its error."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = work()
        except BaseException as err:  # noqa: BLE001 - re-raised in the caller's thread
            outcome["error"] = err

    thread = threading.Thread(target=target, name="lifelong-fit", daemon=True)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[info]}"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as bars:
        tasks_bar = bars.add_task("tasks", total=None, info="starting Ray + DeepSpeed")
        steps_bar = bars.add_task("steps", total=None, info="")
        thread.start()
        while thread.is_alive():
            thread.join(timeout=0.25)
            for event in ray.get(board.drain.remote()):
                _apply(bars, tasks_bar, steps_bar, event)
        for event in ray.get(board.drain.remote()):
            _apply(bars, tasks_bar, steps_bar, event)
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def _apply(bars: Progress, tasks_bar: Any, steps_bar: Any, event: dict) -> None:
    kind = event["kind"]
    if kind == "start":
        bars.update(tasks_bar, total=event["n_tasks"], completed=event.get("done", 0), info="")
    elif kind == "task":
        bars.update(steps_bar, total=event["steps"], completed=0,
                    description=f"task {event['task']}", info=event["name"])
    elif kind == "step":
        bars.update(steps_bar, completed=event["step_in_task"], info=f"loss {event['loss']:.3f}")
    elif kind == "row":
        row = event["row"]
        bars.update(tasks_bar, advance=1, info=f"acc on task {event['task']}: {row[event['task']]:.3f}")
        bars.update(steps_bar, completed=bars.tasks[steps_bar].total)
