"""The negative-binomial log-likelihood of the mapping written without cancellation for large α (what a minibatch fit
scores its batches with).

Per count x of mean μ and shape α, without the constant −log Γ(x+1),

    log Γ(x+α) − log Γ(α) + α log α − (α+x) log(α+μ) + x log μ  =  Σ_{j<x} log1p(j/α) − (α+x) log1p(μ/α) + x log μ

(the log α parts cancel exactly). The full-data objective (:mod:`.objective`) sums the left side's terms apart; for a
large α (1/v_eg² of a gene whose counts are Poisson-like: its guide can draw α of 1e9 and more) their float32 values
are huge and nearly cancel, and their rounding errors can exceed the model's whole loss. A minibatch fit, whose noisier
steps widen such genes' guides, measurably learned to exploit that rounding (benchmarks/RESULTS.md, "Minibatch
mapping"); on the right side every term stays of the size of the result.

:func:`stable_block_terms` gives the μ-dependent part of a block of locations of one slide and its gradients (as
:func:`.objective.block_terms` does for its form), :class:`StableMeanTerms` sums it over a batch's blocks, and
:func:`count_terms` adds ``Σ_{j<x} log1p(j/α)`` from a count histogram.
"""

from __future__ import annotations

import torch


def stable_block_terms(w, signatures, platform, background, overdispersion, detection, values, flat_index):
    """``Σ x log μ − (α+x) log1p(μ/α)`` over a block of locations of one slide (``−Σ α log1p(μ/α)`` over every entry
    plus ``Σ x (log μ − log1p(μ/α))`` over the non-zero counts only), and its gradients.

    Parameters and returns as :func:`.objective.block_terms`: ``w`` ``(n, F)``, ``signatures`` ``(F, G)``,
    ``platform``, ``background`` and ``overdispersion`` ``(1, G)``, ``detection`` ``(n, 1)``, the block's non-zero
    ``values`` and their ``flat_index`` (row * G + gene); returns the part (0-d) and its gradients with respect to
    ``w``, ``platform``, ``background``, ``detection`` and ``overdispersion`` (those of ``(1, G)`` tensors as ``(G,)``).
    """
    cell_part = w @ signatures  # Σ_f w_sf g_fg
    mu = torch.addcmul(background, cell_part, platform).mul_(detection)
    log1p_ratio = torch.log1p(mu / overdispersion)
    inverse_total = (mu + overdispersion).reciprocal_()
    mu_observed = mu.view(-1).index_select(0, flat_index)
    log1p_observed = log1p_ratio.view(-1).index_select(0, flat_index)
    fraction_observed = mu_observed * inverse_total.view(-1).index_select(0, flat_index)  # μ / (α+μ) where x > 0
    log_lik = (torch.dot(values, torch.log(mu_observed) - log1p_observed)
               - torch.dot(overdispersion.view(-1), log1p_ratio.sum(0)))
    # ∂/∂α: μ/(α+μ) − log1p(μ/α) everywhere, plus x μ / (α (α+μ)) where x > 0 (the 1/α applied per gene, after the
    # sum over locations; a location × gene scratch, not a scatter onto repeated gene indices: deterministic on a GPU)
    alpha_terms = torch.mul(mu, inverse_total).sub_(log1p_ratio)
    observed_terms = torch.zeros_like(mu)
    observed_terms.view(-1).scatter_add_(0, flat_index, values * fraction_observed)
    grad_alpha = alpha_terms.sum(0) + observed_terms.sum(0) / overdispersion.view(-1)
    # ∂/∂μ: −α/(α+μ) everywhere, plus x/μ − x/(α+μ) where x > 0 (as in the full-data form)
    grad_mu = inverse_total.mul_(-overdispersion)
    grad_mu.view(-1).scatter_add_(0, flat_index, values * (1 - fraction_observed) / mu_observed)
    grad_detection = (grad_mu * mu).sum(1, keepdim=True) / detection  # ∂μ/∂y_s = μ / y_s
    grad_linear = grad_mu.mul_(detection)  # ∂/∂(m_g Σ_f w g + s)
    grad_platform = (grad_linear * cell_part).sum(0)
    grad_w = grad_linear @ (signatures * platform).T
    return log_lik, grad_w, grad_platform, grad_linear.sum(0), grad_detection, grad_alpha


class StableMeanTerms(torch.autograd.Function):
    """Σ of :func:`stable_block_terms` over a batch's blocks (``batch.blocks``: rows counted within the batch, one
    slide each). Gradients are computed in the forward pass, block by block, so that no location × gene temporary
    outlives its block."""

    @staticmethod
    def forward(ctx, w, platform, background, detection, overdispersion, batch):
        grad_w = torch.empty_like(w)
        grad_platform = torch.zeros_like(platform)
        grad_background = torch.zeros_like(background)
        grad_detection = torch.empty_like(detection)
        grad_alpha = torch.zeros_like(overdispersion)
        log_lik = w.new_zeros(())
        for block in batch.blocks:
            rows, slide = slice(block.start, block.end), slice(block.batch, block.batch + 1)
            terms = stable_block_terms(w[rows], batch.signatures, platform, background[slide],
                                       overdispersion[slide], detection[rows], block.values, block.flat_index)
            log_lik += terms[0]
            grad_w[rows] = terms[1]
            grad_platform += terms[2]
            grad_background[slide] += terms[3]
            grad_detection[rows] = terms[4]
            grad_alpha[slide] += terms[5]
        ctx.save_for_backward(grad_w, grad_platform, grad_background, grad_detection, grad_alpha)
        return log_lik

    @staticmethod
    def backward(ctx, grad_output):
        return (*(grad * grad_output for grad in ctx.saved_tensors), None)


def count_terms(exceedance, large_values, large_alpha, alpha, steps, cutoff: int) -> torch.Tensor:
    """``Σ_{j<x} log1p(j/α)`` over counts: ``Σ_j #(x > j) log1p(j/α)`` from the ``(E, K, G)`` ``exceedance`` table
    (``alpha`` ``(E, G)``, ``steps`` ``(K, 1)``: j = 0 ... K−1), and for each count above the cutoff K (``large_values``
    with their ``large_alpha``) the rest, ``log Γ(x+α) − log Γ(K+α) − (x−K) log α``, in float64 (few counts)."""
    histogram = (exceedance * torch.log1p(steps / alpha.unsqueeze(1))).sum()
    x, a = large_values.double(), large_alpha.double()
    large = (torch.lgamma(x + a) - torch.lgamma(cutoff + a) - (x - cutoff) * torch.log(a)).sum()
    return histogram + large.to(histogram.dtype)
