"""Naive fine-tuning: the lower bound every CL strategy must beat."""

from lifelong.strategies.base import Strategy, Support


class Naive(Strategy):
    name = "naive"
    description = "fine-tune on each task in turn (lower bound)"
    support = Support.everywhere()  # tests/e2e/test_sharding_equivalence.py
