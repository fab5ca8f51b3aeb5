"""Adam for a table of per-location parameters of which each step sees only some rows ("lazy" Adam).

Why not torch's Adam on the whole table: a location outside the batch has a zero gradient, yet torch's Adam still
moves it, by its decaying first moment over its slowly decaying second one, at every step. With n batches per epoch
a location is moved by its stale gradient for n − 1 steps after each visit, its second moment is diluted by the
zero gradients (effective step about √n times larger), and every step costs a pass over all S × L values and both
moments. Here a row's moments and its own step count (for the bias corrections) advance only when the row is in the
batch, so each location takes one Adam step per visit, as in a full-data fit, and a step costs O(N × L). With the
batch holding every location, this is torch's Adam (its default, single-tensor algorithm). Measured on simulated
data (benchmarks/RESULTS.md, "Minibatch mapping"): see there for the comparison with torch's Adam on the table.
"""

from __future__ import annotations

import torch


class RowwiseAdam:
    """Adam on ``parameters[:, rows]`` of a ``(2, S, L)`` table (locations and scales of S locations), updating the
    given rows only (unique within a step), in place.

    ``lr``, ``betas`` and ``eps``: as torch's Adam (defaults equal).
    """

    def __init__(self, parameters: torch.Tensor, lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8):
        self.parameters, self.lr, self.betas, self.eps = parameters, lr, betas, eps
        self.first_moment = torch.zeros_like(parameters)
        self.second_moment = torch.zeros_like(parameters)
        self.steps = torch.zeros(parameters.shape[1], 1, dtype=parameters.dtype, device=parameters.device)

    @torch.no_grad()
    def step(self, rows: torch.Tensor, grad: torch.Tensor) -> None:
        """One Adam step of the rows ``rows`` (long, ``(N,)``) with their gradient ``grad`` (``(2, N, L)``)."""
        beta1, beta2 = self.betas
        steps = self.steps[rows] + 1
        first = self.first_moment[:, rows].lerp_(grad, 1 - beta1)
        second = self.second_moment[:, rows].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        step_size = self.lr / (1 - beta1 ** steps)
        denominator = (second.sqrt() / (1 - beta2 ** steps).sqrt()).add_(self.eps)
        updated = self.parameters[:, rows].addcdiv_(first * step_size, denominator, value=-1)
        # index_copy_ with unique rows: deterministic on every device
        self.parameters.index_copy_(1, rows, updated)
        self.first_moment.index_copy_(1, rows, first)
        self.second_moment.index_copy_(1, rows, second)
        self.steps.index_copy_(0, rows, steps)

    def state_dict(self) -> dict:
        return {"first_moment": self.first_moment.cpu(), "second_moment": self.second_moment.cpu(),
                "steps": self.steps.cpu()}

    def load_state_dict(self, state: dict) -> None:
        for name in ("first_moment", "second_moment", "steps"):
            getattr(self, name).copy_(state[name])
