"""Accuracy matrix -> ACC / BWT / FWT / forgetting (and, later, plasticity probes)."""

from lifelong.metrics.continual import (average_accuracy, backward_transfer, forgetting,
                                        forward_transfer, summarize)

__all__ = ["average_accuracy", "backward_transfer", "forward_transfer", "forgetting", "summarize"]
