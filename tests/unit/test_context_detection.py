"""GateON's context detector (``strategies/context_detection.py``) on synthetic loss streams
whose true contexts, and so whose switches, are known: when it declares a switch, which
context it then takes (a known one that fits, a new one, the closest one once slots run
out), that it never switches before it is confident, and that its state survives a round
trip. And ``detection_scores`` on hand cases."""

from __future__ import annotations

import copy
import math
import random
from collections import defaultdict
from typing import Optional

import pytest

from lifelong.strategies.context_detection import ContextDetector, detection_scores

# ratio 1.2 over the last 10 losses; confident after 22 stable steps (1 - 0.9^22 > 0.9)
DETECTOR = dict(ratio=1.2, window=10, confident=0.9, rate=0.1)


class World:
    """A learner seen only through its losses: detector context ``j`` has trained
    ``skill[j][data]`` steps on a kind of data, and its loss there falls from 2.3 towards
    0.3 as it does (times a seeded +-3% noise)."""

    def __init__(self, seed: int = 0) -> None:
        self.skill: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.noise = random.Random(seed)

    def loss(self, context: int, data: str) -> float:
        return 0.3 + 2.0 * math.exp(-self.skill[context][data] / 10)

    def observed(self, context: int, data: str) -> float:
        return self.loss(context, data) * (1.0 + 0.03 * (2 * self.noise.random() - 1))


def feed(detector: ContextDetector, world: World, segments: list[tuple[str, int]],
         tried: Optional[list] = None) -> list[tuple[int, int]]:
    """Train through ``segments`` (data kind, steps); the (step, context) of each switch.
    Each step measures the batch in the current context, lets the detector decide, then
    trains the context it is in."""
    switches, step = [], 0
    for data, steps in segments:
        for _ in range(steps):
            def try_contexts(ks: list[int], data: str = data) -> list[float]:
                if tried is not None:
                    tried.append((step, list(ks)))
                return [world.loss(k, data) for k in ks]

            new = detector.observe(world.observed(detector.current, data), try_contexts)
            if new is not None:
                switches.append((step, new))
            world.skill[detector.current][data] += 1
            step += 1
    return switches


def test_switches_at_each_boundary_reusing_a_known_context_and_opening_new_ones():
    detector, tried = ContextDetector(slots=8, **DETECTOR), []
    switches = feed(detector, World(), [("A", 60), ("B", 60), ("A", 60), ("C", 60)], tried)
    # B is new (the only known context, 0, has no one else to try); A comes back to context 0,
    # which fits; C fits neither 0 nor 1.
    assert switches == [(60, 1), (120, 0), (180, 2)]
    assert tried == [(120, [0]), (180, [1])]  # the known contexts other than the current one
    assert detector.known == 3 and detector.current == 2
    assert detection_scores([s for s, _ in switches], [60, 120, 180]) == {
        "recall": 1.0, "precision": 1.0, "delay_steps": 0.0}
    assert all(len(h) <= DETECTOR["window"] for h in detector.history)


def test_no_switch_before_the_context_is_confident():
    detector, tried = ContextDetector(slots=8, **DETECTOR), []
    # The data changes after 10 steps: confidence 1 - 0.9^10 = 0.65 < 0.9, so the jump is
    # learnt in context 0, which never becomes surprised enough again to switch.
    assert feed(detector, World(), [("A", 10), ("B", 80)], tried) == []
    assert tried == [] and detector.known == 1 and detector.current == 0
    # the same jump after 30 steps (confidence 0.96) is a switch, on its very step
    assert feed(ContextDetector(slots=8, **DETECTOR), World(), [("A", 30), ("B", 30)]) == [(30, 1)]


def test_the_first_fitting_context_in_order_of_creation_is_reused():
    detector = ContextDetector(slots=8, ratio=1.2, window=5, confident=0.9, rate=0.1,
                               history=[[0.3] * 5, [0.4] * 5, [0.5] * 5], confidence=[1.0, 1.0, 1.0],
                               current=2)
    losses = {0: 0.35, 1: 0.2}  # both fit (<= 1.2 x their mean); 1 is lower, 0 came first
    assert detector.observe(2.0, lambda ks: [losses[k] for k in ks]) == 0
    assert detector.current == 0 and detector.known == 3
    assert detector.history[0] == [0.3] * 4 + [0.35]  # the chosen context records its loss
    assert detector.history[2] == [0.5] * 5  # the surprising loss is not the old context's


def test_with_every_slot_taken_the_closest_known_context_is_reused():
    detector = ContextDetector(slots=3, ratio=1.2, window=5, confident=0.9, rate=0.1,
                               history=[[0.3] * 5, [0.4] * 5, [0.5] * 5], confidence=[1.0, 1.0, 1.0],
                               current=2)
    losses = {0: 1.9, 1: 1.5}  # neither fits
    assert detector.observe(2.0, lambda ks: [losses[k] for k in ks]) == 1
    assert detector.known == 3 and detector.current == 1 and detector.history[1][-1] == 1.5
    # the same with a free slot opens a new, empty context
    roomy = ContextDetector(slots=4, ratio=1.2, window=5, confident=0.9, rate=0.1,
                            history=[[0.3] * 5, [0.4] * 5, [0.5] * 5], confidence=[1.0, 1.0, 1.0], current=2)
    assert roomy.observe(2.0, lambda ks: [losses[k] for k in ks]) == 3
    assert roomy.history[3] == [] and roomy.confidence[3] == 0.0 and roomy.known == 4
    # on a stream: two slots, a third kind of data goes to the other known context
    assert feed(ContextDetector(slots=2, **DETECTOR), World(), [("A", 60), ("B", 60), ("C", 5)])[:2] == [
        (60, 1), (120, 0)]


def test_a_single_slot_never_switches_it_learns_the_new_data_in_place():
    """With one slot there is nowhere to go: a surprising batch is an ordinary step of
    context 0 (no switch, which would commit availability and restart the optimizer)."""
    detector, tried = ContextDetector(slots=1, **DETECTOR), []
    assert feed(detector, World(), [("A", 60), ("B", 60)], tried) == []
    assert tried == [] and detector.known == 1
    assert detector.history[0][-1] < 1.0  # it followed the new data's falling loss


def test_state_dict_round_trip_continues_the_same_decisions():
    segments = [("A", 60), ("B", 60), ("A", 60), ("C", 60)]
    detector, world = ContextDetector(slots=8, **DETECTOR), World(seed=3)
    feed(detector, world, segments[:2])
    state = detector.state_dict()
    saved = copy.deepcopy(state)
    resumed = ContextDetector(slots=8, **DETECTOR)
    resumed.load_state_dict(state)
    twin = copy.deepcopy(world)
    rest = feed(detector, world, segments[2:])
    assert state == saved  # the state handed out is a copy: training on does not change it
    assert feed(resumed, twin, segments[2:]) == rest == [(0, 0), (60, 2)]
    assert resumed.state_dict() == detector.state_dict()


@pytest.mark.parametrize("switches, boundaries, expected", [
    ([100, 205, 250], [100, 200, 300], (2 / 3, 2 / 3, 2.5)),  # 250: a second hit; 300 missed
    ([40, 103], [100], (1.0, 0.5, 3.0)),  # 40: a false alarm before the first boundary
    ([199, 200], [100, 200], (1.0, 1.0, 49.5)),  # 199 is late for 100, 200 on time
    ([], [100, 200], (0.0, math.nan, math.nan)),  # nothing detected
    ([50], [], (math.nan, 0.0, math.nan)),  # one task: every switch is a false alarm
])
def test_detection_scores_on_hand_cases(switches, boundaries, expected):
    scores = detection_scores(switches, boundaries)
    got = (scores["recall"], scores["precision"], scores["delay_steps"])
    for value, want in zip(got, expected):
        assert (math.isnan(value) and math.isnan(want)) or value == pytest.approx(want)
