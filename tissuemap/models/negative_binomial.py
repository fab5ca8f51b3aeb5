"""Negative-binomial terms shared by the reference regression and the spatial mapping (spec §2, §3).

Both models score counts x ~ NB(mean μ, shape α), Pyro's ``GammaPoisson(α, α / μ)``:

    log p(x) = log Γ(x+α) − log Γ(α) − log x! + α log α − α log(α+μ) + x log μ − x log(α+μ)

Summed over many counts that share α, log Γ(x+α) − log Γ(α) = Σ_{j<x} log(α+j) becomes Σ_j #(x > j) log(α+j): a
table of exceedance counts, built once from a histogram of the counts, times log(α+j), with no transcendental
function per count. Counts above the histogram's cutoff K add log Γ(x+α) − log Γ(K+α) each. The mapping writes the
same sum as x log α + Σ_{j<x} log1p(j/α) and folds x log α into its other terms (for a large α they would nearly
cancel): :class:`ExceedanceTerms`, :func:`large_count_log1p_terms`.

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


def histogram_log1p_terms(exceedance: torch.Tensor, alpha: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """Σ_j #(x > j) log1p(j/α): :func:`histogram_log_gamma_terms` without Σ min(x, K) log α (see
    :class:`ExceedanceTerms`, the same for a table that stays fixed), from a dense table (parameters as there)."""
    return (exceedance * torch.log1p(steps / alpha)).sum()


def large_count_log_gamma_terms(values: torch.Tensor, alpha: torch.Tensor, cutoff: int) -> torch.Tensor:
    """Σ log Γ(x+α) − log Γ(K+α) over counts x above the cutoff K, each with its own α: the rest of their
    Σ log Γ(x+α) − log Γ(α) beyond :func:`histogram_log_gamma_terms`."""
    return (torch.lgamma(values + alpha) - torch.lgamma(cutoff + alpha)).sum()


def large_count_log1p_terms(values: torch.Tensor, pairs: torch.Tensor, alpha: torch.Tensor, cutoff: int,
                            pair_counts: torch.Tensor, pair_excess: torch.Tensor) -> torch.Tensor:
    """Σ_{K≤j<x} log1p(j/α) = log Γ(x+α) − log Γ(K+α) − (x−K) log α over counts x above the cutoff K: the rest of their
    Σ_{j<x} log1p(j/α) beyond an :class:`ExceedanceTerms` table.

    ``pairs``: each count's index in ``alpha`` ``(E, G)`` flattened; ``pair_counts`` and ``pair_excess`` ``(E, G)``:
    how many of the counts each (batch, gene) has, and their Σ (x−K), so that the terms of α alone are computed once
    per batch and gene. In float64 (few counts; in float32 the two log Γ, each about α log α, would nearly cancel
    for a large α); returned in ``alpha``'s dtype.
    """
    x, a = values.double(), alpha.double().reshape(-1)
    terms = (torch.lgamma(x + a.index_select(0, pairs)).sum()
             - torch.dot(pair_counts.double().reshape(-1), torch.lgamma(cutoff + a))
             - torch.dot(pair_excess.double().reshape(-1), torch.log(a)))
    return terms.to(alpha.dtype)


class ExceedanceTerms:
    """Σ_j #(x > j) log1p(j/α), for a table that stays fixed (the mapping's: its counts never change): the
    :func:`histogram_log_gamma_terms` of the table without their Σ min(x, K) log α, which for a large α is huge and
    nearly cancels a term of the likelihood's other part (the mapping's likelihood is written without both). Summed
    over the table's non-zero entries of rows j ≥ 1 only (row 0 adds log1p(0) = 0): a gene whose counts never exceed
    j has nothing in rows j and above, and most genes' counts stay far below the cutoff, so the table is mostly zeros.

    Parameters
    ----------
    exceedance
        ``(E, K, G)`` from :func:`exceedance_table`, one table per batch.
    """

    def __init__(self, exceedance: torch.Tensor):
        E, K, G = exceedance.shape
        # entries ordered by (batch, gene, j): each (batch, gene)'s entries are one run, j = 1, 2, ...
        by_gene = exceedance[:, 1:].permute(0, 2, 1).reshape(E * G, K - 1)
        nonzero = by_gene > 0
        self.weights = by_gene[nonzero]
        self.steps = torch.arange(1, K, dtype=exceedance.dtype, device=exceedance.device).expand(E * G, K - 1)[nonzero]
        self.runs = nonzero.sum(1)
        self.alpha_index = torch.repeat_interleave(torch.arange(E * G, device=exceedance.device), self.runs)

    def __call__(self, alpha: torch.Tensor) -> torch.Tensor:
        """Σ_j #(x > j) log1p(j/α) over every batch and gene; ``alpha`` ``(E, G)``."""
        return _ExceedanceLog1pTerms.apply(alpha, self)


class _ExceedanceLog1pTerms(torch.autograd.Function):
    """Σ w log1p(j/α) over a table's non-zero entries; the gradient, −Σ_j w (j/α) / (1 + j/α) / α per batch and
    gene, is a sum over each (batch, gene)'s run of entries (a segmented sum: deterministic, no scatter onto
    repeated indices)."""

    @staticmethod
    def forward(ctx, alpha, table):
        ratio = table.steps / alpha.reshape(-1).index_select(0, table.alpha_index)  # j/α
        ctx.save_for_backward(ratio, alpha)
        ctx.table = table
        return torch.dot(table.weights, torch.log1p(ratio))

    @staticmethod
    def backward(ctx, grad_output):
        ratio, alpha = ctx.saved_tensors
        table = ctx.table
        per_entry = table.weights * ratio / (1 + ratio)
        grad = torch.segment_reduce(per_entry, "sum", lengths=table.runs, unsafe=True, initial=0)
        return (grad.view(alpha.shape) / alpha).mul_(-grad_output), None
