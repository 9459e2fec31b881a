"""A task-conditioned, chunked hypernetwork that generates every weight of the target
network (von Oswald et al., "Continual learning with hypernetworks", ICLR 2020).

The target (the platform's MLP or conv stack) keeps its architecture but loses its
parameters: they become activations, ``generate(e_t)``. Its flattened weights are cut into
chunks of ``chunk_size``; chunk j is ``g([e_t, c_j])``, one small MLP ``g`` shared by every
chunk, with a learned chunk embedding c_j. So the hypernetwork can have fewer parameters
than the target (``compression``). Chunk embeddings are shared by every task, or, with
``per_task_chunks``, a set per task (hypnettorch's ``use_cond_chunk_embs``): each task then
owns ``chunks x chunk_dim`` more parameters to fit itself with, frozen after it like e_t.

Every parameter (task embeddings, chunk embeddings, the generator's layers) belongs to
``HyperNet`` itself, and its forward calls no submodule: ZeRO-3 gathers all of them once,
when ``HyperNet`` is called, and the number of contexts in a batch (data-dependent) never
changes which modules run. (The layers are registered one by one, not in an
``nn.ParameterList``: a list is a submodule that is never called, so ZeRO-3 would leave its
parameters partitioned, empty, inside the forward.) A row whose context is ``INFER`` runs
in every trained context and keeps the prediction with the lowest entropy (HNET+ENT). The
plasticity probes see the target with one context's generated weights
(``generated_network``, ``generated_weights``).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from lifelong.platform.errors import ConfigError
from lifelong.platform.model import Contextual
from lifelong.strategies.units import fan_in


class HyperNet(Contextual):
    """Generates the target's weights for each context and runs the target with them."""

    def __init__(self, target: nn.Sequential, contexts: int, embedding_dim: int, chunk_dim: int,
                 hidden: list[int], chunk_size: int, seed: int, per_task_chunks: bool = False,
                 embedding_std: float = 1.0, chunk_std: float = 1.0) -> None:
        super().__init__()
        for module in target:
            if any(True for _ in module.parameters(recurse=False)) and not isinstance(module, (nn.Linear, nn.Conv2d)):
                raise ConfigError(f"strategy 'hnet': cannot generate the weights of {type(module).__name__}")
        self._target = (target,)  # a tuple: not a submodule, so ZeRO-3 never hooks it
        self.shapes = {name: p.shape for name, p in target.named_parameters()}
        self.n_target = sum(math.prod(s) for s in self.shapes.values())
        self.chunk_size = chunk_size
        n_chunks = -(-self.n_target // chunk_size)
        g = torch.Generator().manual_seed(seed * 1_000_033 + 41)
        self.task_embeddings = nn.Parameter(embedding_std * torch.randn(contexts, embedding_dim, generator=g))
        chunk_shape = (contexts, n_chunks, chunk_dim) if per_task_chunks else (n_chunks, chunk_dim)
        self.chunk_embeddings = nn.Parameter(chunk_std * torch.randn(*chunk_shape, generator=g))
        widths = [embedding_dim + chunk_dim, *hidden, chunk_size]
        self.layers = len(widths) - 1
        for i, (width_in, width_out) in enumerate(zip(widths[:-1], widths[1:])):
            last = i == len(widths) - 2
            # Last layer: scaled so that generated weights start near the target's own init
            # (std ~ 1/sqrt(fan_in) of a typical layer), as hypercl's init does in spirit.
            bound = 1.0 / math.sqrt(width_in) if not last else 1.0 / math.sqrt(width_in * self._fan_in_scale(target))
            self.register_parameter(f"weights_{i}", nn.Parameter(torch.empty(width_out, width_in).uniform_(-bound, bound,
                                                                                                   generator=g)))
            self.register_parameter(f"biases_{i}", nn.Parameter(torch.zeros(width_out)))
        self.inferred: Optional[torch.Tensor] = None
        self.trained: list[int] = []  # contexts INFER may pick (set by the strategy)
        self.reg: Optional[tuple[torch.Tensor, torch.Tensor]] = None  # (past contexts, their targets) this step
        self.reg_loss: Optional[torch.Tensor] = None

    @staticmethod
    def _fan_in_scale(target: nn.Sequential) -> float:
        fans = [fan_in(m) for m in target if isinstance(m, (nn.Linear, nn.Conv2d))]
        return float(sum(fans) / len(fans))

    @property
    def weights(self) -> list[nn.Parameter]:
        """The generator's layer weights, first to last."""
        return [getattr(self, f"weights_{i}") for i in range(self.layers)]

    @property
    def biases(self) -> list[nn.Parameter]:
        return [getattr(self, f"biases_{i}") for i in range(self.layers)]

    @property
    def target(self) -> nn.Sequential:
        return self._target[0]

    @property
    def per_task_chunks(self) -> bool:
        return self.chunk_embeddings.dim() == 3

    def task_parameters(self) -> int:
        """Parameters each task owns: its embedding, and its chunk embeddings if per task."""
        own = self.task_embeddings[0].numel()
        return own + (self.chunk_embeddings[0].numel() if self.per_task_chunks else 0)

    def hypernet_parameters(self) -> int:
        """The shared parameters Theta: everything no single task owns."""
        per_task = self.task_embeddings.numel() + (self.chunk_embeddings.numel() if self.per_task_chunks else 0)
        return sum(p.numel() for p in self.parameters()) - per_task

    # -- generation -------------------------------------------------------------------------------
    def generate_flat(self, contexts: torch.Tensor, params: Optional[dict[str, torch.Tensor]] = None) -> torch.Tensor:
        """The target's flattened weights for each of ``contexts``: [len(contexts), n_target];
        from this module's parameters, or from ``params`` by name (e.g. ``ctx.full_params()``)."""
        p = params if params is not None else dict(self.named_parameters())
        e = p["task_embeddings"][contexts.to(p["task_embeddings"].device)]  # [n, te]
        chunk = p["chunk_embeddings"]
        n = e.shape[0]
        chunk = chunk[contexts.to(chunk.device)] if chunk.dim() == 3 else chunk[None].expand(n, -1, -1)
        h = torch.cat([e[:, None, :].expand(n, chunk.shape[1], e.shape[1]), chunk], dim=2)
        for i in range(self.layers):
            h = F.linear(h, p[f"weights_{i}"], p[f"biases_{i}"])
            if i < self.layers - 1:
                h = torch.relu(h)
        return h.reshape(n, -1)[:, :self.n_target]

    # -- what the plasticity probes see: the target with one context's generated weights -----------
    def generated_network(self) -> nn.Sequential:
        return self.target

    def generated_weights(self, params: dict[str, torch.Tensor],
                          context: Optional[torch.Tensor]) -> dict[str, torch.Tensor]:
        """The target's weights, by parameter name, for the context of the probe's rows (one
        task's rows: its first row's context; context 0 where there is none)."""
        c = 0 if context is None or len(context) == 0 else int(context[0])
        with torch.no_grad():
            return self.unflatten(self.generate_flat(torch.tensor([c]), params)[0])

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        out, start = {}, 0
        for name, shape in self.shapes.items():
            size = math.prod(shape)
            out[name] = flat[start:start + size].view(shape)
            start += size
        return out

    def run_target(self, weights: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        h = x
        for name, module in self.target.named_children():
            if isinstance(module, nn.Linear):
                h = F.linear(h, weights[f"{name}.weight"], weights.get(f"{name}.bias"))
            elif isinstance(module, nn.Conv2d):
                h = F.conv2d(h, weights[f"{name}.weight"], weights.get(f"{name}.bias"), module.stride,
                             module.padding, module.dilation, module.groups)
            else:
                h = module(h)
        return h

    # -- forward ----------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        if self.training and self.reg is not None:  # inside forward: ZeRO-3 has gathered Theta here
            past, targets = self.reg
            self.reg_loss = self.regulariser(past.to(x.device), targets.to(x.device))
        if bool((context < 0).any()):
            return self._infer(x, context)
        present = context.unique()
        flat = self.generate_flat(present)
        out = None
        for i, c in enumerate(present.tolist()):
            rows = (context == c).nonzero().squeeze(1)
            logits = self.run_target(self.unflatten(flat[i]), x[rows])
            out = logits.new_zeros(x.shape[0], logits.shape[1]) if out is None else out
            out = out.index_put((rows,), logits)
        if out is None:  # no rows: still a forward of the right width
            out = self.run_target(self.unflatten(flat.new_zeros(self.n_target)), x)
        return out

    def regulariser(self, past: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """sum over ``past`` of ||h(e_t') - target_t'||^2 (the caller scales it)."""
        return (self.generate_flat(past) - targets).square().sum()

    def _infer(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """HNET+ENT: each row in every trained context; the prediction of lowest entropy."""
        candidates = self.trained or [0]
        flat = self.generate_flat(torch.tensor(candidates, device=x.device))
        logits = torch.stack([self.run_target(self.unflatten(flat[i]), x) for i in range(len(candidates))])
        logp = torch.log_softmax(logits.float(), dim=2)
        entropy = -(logp.exp() * logp).sum(2)  # [contexts, rows]
        best = entropy.argmin(0)
        self.inferred = torch.tensor(candidates, device=x.device)[best]
        return logits[best, torch.arange(x.shape[0], device=x.device)]
