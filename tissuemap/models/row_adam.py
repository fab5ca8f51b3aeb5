"""Adam for a table of per-location parameters of which each step sees only some rows ("lazy" Adam).

Why not torch's Adam on the whole table: a location outside the batch has a zero gradient, yet torch's Adam still
moves it, by its decaying first moment over its slowly decaying second one, at every step. With n steps per epoch a
location keeps moving along its stale gradient for the n − 1 steps after each visit, its second moment is diluted by
the zero gradients (an effective step about √n times larger than Adam's), and every step costs a pass over all S × L
values and both moments: at 200,000 bins in batches of 2,500 (80 steps per epoch), by a count of operations, about
as much work per epoch as the likelihood of 2,000 genes itself. Here a row's moments and its own step count (for the
bias corrections) advance only when the row is in the batch: each location takes one Adam step per visit, as in a
full-data fit, and a step costs O(N × L). With the batch holding every location this is torch's Adam (its default,
single-tensor algorithm).

Measured (benchmarks/RESULTS.md, "Minibatch mapping": 4,000 spots, 4 steps per epoch, 1,000 epochs, lr 0.02, the
cancellation-free batch likelihood, then in a module of its own, now :mod:`.cell2location.likelihood`): row-wise, −ELBO 4.6823e6 (median of the last tenth),
q05 Pearson with the full-data fit per type >= 0.989, with the truth 0.9192 (per type 0.8977); torch's Adam on
the table, −ELBO 4.6849e6, per type >= 0.946 with the full-data fit, with the truth 0.9488 (per type 0.9145). The
whole-table Adam's larger effective step on the local sites carried it further from the full-data fit (itself still
improving at 1,000 steps), closer to the truth at this budget but to a worse ELBO; row-wise Adam follows the
full-data fit, at a cost per step that does not grow with the data.
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
