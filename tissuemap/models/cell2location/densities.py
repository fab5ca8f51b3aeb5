"""The per-value log-densities of the ELBO, written once for both objectives (full-data :mod:`.objective`, minibatch
:mod:`.minibatch`): the Gamma prior of a site's values, and the guide's draw with its −log q.

Both take whatever values the caller has: all of them as one flat vector, or a site's or a batch's rows.
"""

from __future__ import annotations

import math

import torch

from tissuemap.models.cell2location.sites import guide_scale

HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)  # −log of the standard normal density's constant


def gamma_normaliser(shape, rate, repeats=1) -> torch.Tensor:
    """Σ repeats · (a log b − log Γ(a)) over the given (shape a, rate b) pairs (broadcast to each other): the part of
    :func:`gamma_log_density` that depends on the prior alone, computed once per distinct pair; ``repeats``, how many
    values share each pair (a number, or a tensor of one count per pair)."""
    terms = shape * torch.log(rate) - torch.lgamma(shape)
    return torch.dot(repeats, terms) if isinstance(repeats, torch.Tensor) else repeats * terms.sum()


def gamma_log_density(shape, rate, z, theta, normaliser=None) -> torch.Tensor:
    """Σ over θ's values of log Gamma(θ; a, b) = a log b − log Γ(a) + (a − 1) z − b θ, with log θ = z given.

    ``shape`` and ``rate`` broadcast to θ. ``normaliser``: the Σ a log b − log Γ(a) over θ's values when the caller
    has it (:func:`gamma_normaliser`, e.g. from fewer distinct pairs than values); ``None``: computed here from
    ``shape`` and ``rate`` as given, each pair once, times the values that share it.
    """
    if normaliser is None:
        pairs = torch.broadcast_shapes(shape.shape, rate.shape).numel()
        normaliser = gamma_normaliser(shape, rate, theta.numel() // pairs)
    return normaliser + _weighted_sum(shape - 1, z) - _weighted_sum(rate, theta)


def _weighted_sum(weights: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Σ weights · values, ``weights`` broadcast to ``values`` (one dot product where both are flat vectors)."""
    if weights.shape == values.shape and values.dim() == 1:
        return torch.dot(weights, values)
    return torch.mul(weights, values).sum()


def draw_guide(parameters: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``z = loc + σ·eps`` for the guide's ``(2, ...)`` locations and unconstrained scales (:func:`.sites.guide_scale`),
    and −log q of the draw θ = exp(z): its normal density, Σ log σ + eps²/2 + log √(2π), plus the Jacobian of exp, Σ z.
    """
    loc, scale = parameters[0], guide_scale(parameters[1])
    z = torch.addcmul(loc, scale, eps)
    flat_eps = eps.reshape(-1)
    minus_log_q = torch.log(scale).sum() + 0.5 * torch.dot(flat_eps, flat_eps) + z.sum() + HALF_LOG_2PI * eps.numel()
    return z, minus_log_q
