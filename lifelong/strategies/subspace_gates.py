"""Task-free gates: which context a row belongs to, from reconstruction error (Expert Gate).

Expert Gate (Aljundi et al. 2017) gives each expert an undercomplete autoencoder trained
on that expert's data; at test time the autoencoder that reconstructs a row best picks its
expert. Here a context's gate is a set of *linear* autoencoders, one per output class the
context was trained on: the encoder projects a centred row onto the class's ``rank`` leading
principal directions and the decoder maps it back. That is the optimum a linear autoencoder
trained by SGD converges to (Baldi & Hornik 1989), computed in closed form at the end of
the context's task from the rows' first and second moments (all-reduced, so every worker
fits the same gate). The error of a row under class autoencoder (mu, V) is
||x - mu||^2 - ||V^T (x - mu)||^2.

Why per class, and why linear: on Split MNIST a sigmoid autoencoder per task, trained for
an epoch, picked the right task for 74% of test rows (80% after 3 epochs); one per task in
closed form, 93%; one per class, 96% (rank 20). Measured with the prototype behind
``docs/moe.md``'s table.
"""

from __future__ import annotations

from typing import Any, Callable

import torch


class SubspaceGates:
    """Per (context, class): a mean and an orthonormal basis; ``infer`` picks the context
    whose class subspace reconstructs a row best."""

    def __init__(self, dim: int, rank: int) -> None:
        self.dim, self.rank = dim, rank
        self.means = torch.zeros(0, dim)
        self.bases = torch.zeros(0, dim, rank)
        self.contexts = torch.zeros(0, dtype=torch.int64)  # the context of each (context, class)
        self.classes = torch.zeros(0, dtype=torch.int64)
        self._moments: dict[int, list[torch.Tensor]] = {}  # class -> [count, sum, sum of outer products]

    def observe(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Add rows of the context being learnt to this worker's moments."""
        for c in y.unique().tolist():
            rows = x[y == c].double()
            count, total, outer = self._moments.setdefault(c, self._empty_moments())
            count += rows.shape[0]
            total += rows.sum(0)
            outer += rows.T @ rows

    def fit(self, context: int, classes: list[int],
            reduce: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Fit ``context``'s class autoencoders from every worker's moments (``reduce`` sums
        them; every rank passes the same ``classes``) and forget the moments."""
        packed = torch.stack([self._pack(c) for c in classes]) if classes else torch.zeros(0)
        packed = reduce(packed)
        self._moments = {}
        means, bases = [], []
        for moments in packed:
            count = moments[0].clamp(min=1.0)
            mean = moments[1:1 + self.dim] / count
            second = moments[1 + self.dim:].view(self.dim, self.dim) / count
            covariance = second - torch.outer(mean, mean)
            _, vectors = torch.linalg.eigh(covariance)  # ascending eigenvalues
            means.append(mean.float())
            bases.append(vectors[:, -self.rank:].flip(1).float().contiguous())
        if not means:
            return
        self.means = torch.cat([self.means, torch.stack(means)])
        self.bases = torch.cat([self.bases, torch.stack(bases)])
        self.contexts = torch.cat([self.contexts, torch.full((len(means),), context, dtype=torch.int64)])
        self.classes = torch.cat([self.classes, torch.tensor(classes, dtype=torch.int64)])

    def _empty_moments(self) -> list[torch.Tensor]:
        return [torch.zeros((), dtype=torch.float64), torch.zeros(self.dim, dtype=torch.float64),
                torch.zeros(self.dim, self.dim, dtype=torch.float64)]

    def _pack(self, c: int) -> torch.Tensor:
        count, total, outer = self._moments.get(c) or self._empty_moments()
        return torch.cat([count.view(1), total, outer.flatten()])

    def observed_classes(self) -> list[int]:
        """Classes this worker has moments for (reduce across workers before using)."""
        return sorted(self._moments)

    @property
    def fitted(self) -> bool:
        return self.means.shape[0] > 0

    def errors(self, x: torch.Tensor) -> torch.Tensor:
        """Squared reconstruction error of each row under each (context, class) autoencoder:
        [rows, pairs]."""
        x = x.float()
        means, bases = self.means.to(x.device), self.bases.to(x.device)
        codes = torch.einsum("bd,pdr->bpr", x, bases) - torch.einsum("pd,pdr->pr", means, bases)[None]
        centred = (x.square().sum(1)[:, None] - 2.0 * x @ means.T + means.square().sum(1)[None])
        return centred - codes.square().sum(2)

    def infer(self, x: torch.Tensor) -> torch.Tensor:
        """Each row's context: that of the autoencoder with the lowest error (0 before any fit)."""
        if not self.fitted:
            return torch.zeros(x.shape[0], dtype=torch.int64, device=x.device)
        return self.contexts.to(x.device)[self.errors(x).argmin(1)]

    def state_dict(self) -> dict[str, Any]:
        return {"means": self.means, "bases": self.bases, "contexts": self.contexts, "classes": self.classes}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.means, self.bases = state["means"].clone(), state["bases"].clone()
        self.contexts, self.classes = state["contexts"].clone(), state["classes"].clone()
        self._moments = {}


def fit_classes(observed: list[int], outputs: int, reduce: Callable[[torch.Tensor], torch.Tensor]) -> list[int]:
    """The classes any worker observed (the same list on every rank)."""
    seen = torch.zeros(outputs, dtype=torch.float64)
    if observed:
        seen[torch.tensor(observed)] = 1.0
    return [int(c) for c in (reduce(seen) > 0).nonzero().flatten().tolist()]

