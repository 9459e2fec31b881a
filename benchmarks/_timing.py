"""Shared by the benchmark scripts: timings taken in alternating rounds (forward, then
reversed order) and reported as medians, so that a machine's drift during a run spreads
over every case alike; the ratios between cases are what to read."""

from __future__ import annotations

import statistics
import time
from typing import Callable


def alternating_medians(measure: dict[str, Callable[[], float]], rounds: int) -> dict[str, float]:
    """The median of ``rounds`` calls of each ``measure[label]()`` (seconds), the order of
    the labels reversed every other round."""
    times: dict[str, list[float]] = {label: [] for label in measure}
    for r in range(rounds):
        for label in (list(measure) if r % 2 == 0 else list(reversed(measure))):
            times[label].append(measure[label]())
    return {label: statistics.median(v) for label, v in times.items()}


def seconds_per_call(call: Callable[[], object], calls: int, warmup: int = 5) -> float:
    """Wall seconds per ``call()``, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        call()
    started = time.perf_counter()
    for _ in range(calls):
        call()
    return (time.perf_counter() - started) / calls
