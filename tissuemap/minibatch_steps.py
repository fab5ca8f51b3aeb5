"""Training steps of the mapping model on minibatches of locations (stochastic variational inference).

:class:`MinibatchSteps` holds the guide split as :class:`~tissuemap.models.minibatch.SplitLayout` splits it: the
global sites' ``(2, P_global)`` tensor, trained by torch's Adam (as a full-data fit trains everything), and the
per-location ``(2, S, L)`` table, trained row by row by :class:`~tissuemap.models.row_adam.RowwiseAdam`. A step
takes the ids of its locations (from the epoch's seeded permutation), draws the guide's noise for the global sites
and the batch's rows only, from its own seeded generator, and returns the step's loss (an unbiased estimate of the
full-data −ELBO without Σ log Γ(x+1)) on the device.
"""

from __future__ import annotations

import dataclasses

import torch

from tissuemap.models.cell2location import MappingData, MappingPriors, initial_guide_parameters
from tissuemap.models.minibatch import MinibatchObjective
from tissuemap.models.row_adam import RowwiseAdam


class MinibatchSteps:
    """The state of a minibatch fit and one step of it.

    Parameters
    ----------
    data
        The model's data, ``counts`` a torch sparse CSR tensor (:class:`MinibatchObjective`).
    priors
        Fixed hyper-parameters.
    lr
        Adam learning rate (both optimisers).
    noise
        Generator of the guide's noise (seeded by the caller).
    """

    def __init__(self, data: MappingData, priors: MappingPriors, lr: float, noise: torch.Generator):
        self.objective = MinibatchObjective(data, priors)
        self.layout = self.objective.layout
        values = self.objective.values
        # the guide's starting point needs the counts' shape, dtype and device only
        shaped_like_counts = dataclasses.replace(data, counts=values.new_zeros(()).expand(data.counts.shape))
        global_part, local = self.layout.split(initial_guide_parameters(shaped_like_counts, priors))
        self.global_parameters = global_part.contiguous().requires_grad_()
        self.local_parameters = local.contiguous()
        self.global_optimizer = torch.optim.Adam([self.global_parameters], lr=lr)
        self.local_optimizer = RowwiseAdam(self.local_parameters, lr)
        self.noise = noise

    @property
    def log_factorial_total(self) -> float:
        return self.objective.log_factorial_total

    def step(self, ids: torch.Tensor) -> torch.Tensor:
        """One Adam step on the locations ``ids``; returns the step's loss (0-d, on the device)."""
        batch = self.objective.batch(ids)
        local_rows = self.local_parameters[:, batch.ids].requires_grad_()
        n_global, width = self.layout.global_size, self.layout.local_width
        eps = torch.empty(n_global + batch.size * width, dtype=local_rows.dtype, device=local_rows.device)
        eps.normal_(generator=self.noise)
        loss = self.objective.negative_elbo(self.global_parameters, local_rows, eps[:n_global],
                                            eps[n_global:].view(batch.size, width), batch)
        global_grad, local_grad = torch.autograd.grad(loss, [self.global_parameters, local_rows])
        self.global_parameters.grad = global_grad
        self.global_optimizer.step()
        self.local_optimizer.step(batch.ids, local_grad)
        return loss.detach()

    def guide_parameters(self) -> torch.Tensor:
        """The trained guide as one ``(2, P)`` tensor in the full-data layout (what export reads)."""
        return self.layout.join(self.global_parameters.detach(), self.local_parameters)

    def state(self) -> dict:
        """What the rest of the fit depends on, for a checkpoint (the batch order's generator is the caller's)."""
        return {
            "global_parameters": self.global_parameters.detach().cpu(),
            "local_parameters": self.local_parameters.cpu(),
            "global_optimizer": self.global_optimizer.state_dict(),
            "local_optimizer": self.local_optimizer.state_dict(),
            "noise": self.noise.get_state(),
        }

    def restore(self, state: dict) -> None:
        """Put a :meth:`state` back in place."""
        with torch.no_grad():
            self.global_parameters.copy_(state["global_parameters"])
            self.local_parameters.copy_(state["local_parameters"])
        self.global_optimizer.load_state_dict(state["global_optimizer"])
        self.local_optimizer.load_state_dict(state["local_optimizer"])
        self.noise.set_state(state["noise"])
