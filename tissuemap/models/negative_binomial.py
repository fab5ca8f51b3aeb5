"""Negative-binomial terms shared by the reference regression and the spatial mapping (spec §2, §3).

Both models score counts x ~ NB(mean μ, shape α), Pyro's ``GammaPoisson(α, α / μ)``:

    log p(x) = log Γ(x+α) − log Γ(α) − log x! + α log α − α log(α+μ) + x log μ − x log(α+μ)

Summed over many counts that share α, log Γ(x+α) − log Γ(α) = Σ_{j<x} log(α+j) becomes Σ_j #(x > j) log(α+j): a
table of exceedance counts, built once from a histogram of the counts, times log(α+j), with no transcendental
function per count. Counts above the histogram's cutoff K add log Γ(x+α) − log Γ(K+α) each.

Both models also share the hyper-priors of the additive background (a, m_e, u_e) and of the overdispersion (φ).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Counts up to this value enter Σ log Γ(x+α) through a histogram (a table of this many rows per gene); larger counts,
# about 1% of non-zero ones in scRNA-seq, one by one. The mapping may choose a lower cutoff for its data.
HISTOGRAM_MAX_COUNT = 64


@dataclass(frozen=True)
class NegativeBinomialPriors:
    """Hyper-priors of the additive background s_eg and the overdispersion, the package's defaults (spec §2, §3).
    Gamma(shape, rate) throughout; Exponential(λ) is Gamma(1, λ)."""

    background_a_shape: float = 9.0  # a ~ Gamma(9, 3); u_e ~ Exponential(a), the background's spread
    background_a_rate: float = 3.0
    background_mean_shape: float = 1.0  # m_e ~ Gamma(1, 100): the mean of s_eg
    background_mean_rate: float = 100.0
    phi_shape: float = 9.0  # φ ~ Gamma(9, 3); v ~ Exponential(φ), α = 1 / v²
    phi_rate: float = 3.0


def exceedance_table(histogram: torch.Tensor, dim: int) -> torch.Tensor:
    """Row j (along ``dim``) of the result: how many counts exceed j, from ``histogram`` whose row v − 1 holds how
    many counts have min(x, K) = v (v = 1 ... K)."""
    return histogram.flip(dim).cumsum(dim).flip(dim)


def count_steps(cutoff: int, like: torch.Tensor) -> torch.Tensor:
    """``(K, 1)``: j = 0 ... K − 1, the rows of an exceedance table."""
    return torch.arange(cutoff, dtype=like.dtype, device=like.device).unsqueeze(1)


def histogram_log_gamma_terms(exceedance: torch.Tensor, alpha: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """Σ_j #(x > j) log(α + j): Σ log Γ(min(x, K)+α) − log Γ(α) over the counts of the table.

    Parameters
    ----------
    exceedance
        ``(..., K, G)`` from :func:`exceedance_table`.
    alpha
        ``(..., 1, G)`` the shape of each table's counts.
    steps
        ``(K, 1)`` from :func:`count_steps`.
    """
    return (exceedance * torch.log(alpha + steps)).sum()


def large_count_log_gamma_terms(values: torch.Tensor, alpha: torch.Tensor, cutoff: int) -> torch.Tensor:
    """Σ log Γ(x+α) − log Γ(K+α) over counts x above the cutoff K, each with its own α: the rest of their
    Σ log Γ(x+α) − log Γ(α) beyond :func:`histogram_log_gamma_terms`."""
    return (torch.lgamma(values + alpha) - torch.lgamma(cutoff + alpha)).sum()
