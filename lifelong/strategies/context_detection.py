"""Unsupervised context detection (GateON, ``context=detect``): when the training loss
jumps, the data changed; find the context that fits it, or open a new one.

Following the authors' code (GATEONMNIST, ``nGateON.py``): each context keeps the losses of
its last ``window`` training batches and a confidence that grows while it is stable,
conf += rate * (1 - conf) each step without a switch (from 0 for a new context). A switch
is declared when the current context is confident (conf > ``confident``) and the batch
loss exceeds ``ratio`` times the mean of its history. The known contexts are then tried
on that batch in order of creation; the first whose loss does not exceed ``ratio`` times
its own history's mean is re-used, or else a new context is opened (once ``slots`` are
all taken, the other known context with the lowest loss is re-used instead; with a single
slot there is no switch at all: the surprising batch is an ordinary step of context 0).

This module is pure bookkeeping on numbers: the strategy measures the losses (all-reduced,
so every rank holds the same detector and takes the same decisions).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional


@dataclass
class ContextDetector:
    slots: int
    ratio: float = 1.01
    window: int = 50
    confident: float = 0.9
    rate: float = 0.005
    history: list[list[float]] = field(default_factory=lambda: [[]])  # per context, recent losses
    confidence: list[float] = field(default_factory=lambda: [0.0])
    current: int = 0

    @property
    def known(self) -> int:
        return len(self.history)

    def surprised(self, context: int, loss: float) -> bool:
        """The loss is above ``ratio`` times the context's recent mean (never, without history)."""
        past = self.history[context]
        return bool(past) and loss > self.ratio * (sum(past) / len(past))

    def observe(self, loss: float, try_contexts: Callable[[list[int]], list[float]]) -> Optional[int]:
        """One training batch's loss in the current context; ``try_contexts(ks)`` measures the
        same batch's loss in each of contexts ``ks``. The new context if this is a switch."""
        k = self.current
        others = [j for j in range(self.known) if j != k]
        # One slot: nowhere to switch to, so a surprising batch is an ordinary step of k
        # (a "switch" to k itself would restart the optimizer at every step until it fits).
        stuck = not others and self.known >= self.slots
        if stuck or not (self.confidence[k] > self.confident and self.surprised(k, loss)):
            self.confidence[k] += self.rate * (1.0 - self.confidence[k])
            self._record(k, loss)
            return None
        losses = dict(zip(others, try_contexts(others))) if others else {}
        fits = [j for j in others if not self.surprised(j, losses[j])]
        if fits:
            chosen = fits[0]
        elif self.known < self.slots:
            chosen = self.known
            self.history.append([])
            self.confidence.append(0.0)
        else:  # no free slot: the closest other known context
            chosen = min(losses, key=losses.__getitem__)
        if chosen in losses:
            self._record(chosen, losses[chosen])
        self.current = chosen
        return chosen

    def _record(self, context: int, loss: float) -> None:
        past = self.history[context]
        past.append(float(loss))
        del past[:-self.window]

    def state_dict(self) -> dict[str, Any]:
        return {"history": [list(h) for h in self.history], "confidence": list(self.confidence),
                "current": self.current}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = [list(h) for h in state["history"]]
        self.confidence = list(state["confidence"])
        self.current = int(state["current"])


def detection_scores(switches: list[int], boundaries: list[int]) -> dict[str, float]:
    """How detected switches (global steps) match the true task boundaries (the steps at
    which tasks 1, 2, ... began): a boundary is found by the first switch at or after it and
    before the next boundary; other switches are false alarms.

    recall = found boundaries / boundaries, precision = switches that found one / switches,
    delay = mean steps from a found boundary to its switch."""
    found, delays = 0, []
    for i, start in enumerate(boundaries):
        stop = boundaries[i + 1] if i + 1 < len(boundaries) else float("inf")
        hits = [s for s in switches if start <= s < stop]
        if hits:
            found += 1
            delays.append(hits[0] - start)
    return {"recall": found / len(boundaries) if boundaries else float("nan"),
            "precision": found / len(switches) if switches else float("nan"),
            "delay_steps": sum(delays) / len(delays) if delays else float("nan")}
