"""The fast objective of the cell2location mapping model: its negative ELBO under the mean-field guide, in torch.

Equal to Pyro's ``Trace_ELBO`` on :func:`~.model.model` with ``AutoNormal`` (the tests check loss and gradients), and
much cheaper: reparameterised log-normal draws, closed-form log-densities, and a negative-binomial likelihood that
does no redundant work (the constant ``log Γ(x+1)`` left out, ``Σ log Γ(x+α)`` from each gene's count histogram, the
terms of every location × gene entry and their gradient computed together, block by block, zero counts never read).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from tissuemap.models.cell2location.sites import (
    SITE_NAMES,
    SITES,
    MappingData,
    MappingPriors,
    SiteLayout,
    guide_scale,
)
from tissuemap.models.negative_binomial import (
    HISTOGRAM_MAX_COUNT,
    count_steps,
    exceedance_table,
    histogram_log_gamma_terms,
    large_count_log_gamma_terms,
)

HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
# Entries (locations x genes) of the likelihood computed at once. On CPU ~0.5M keeps every temporary in cache-sized,
# reusable heap blocks (measured fastest on a 2-core EPYC; whole-matrix temporaries are slower per entry). On a GPU
# whole batches, up to 2^28 entries (1 GiB per float32 temporary).
CPU_BLOCK_ENTRIES = 1 << 19
GPU_BLOCK_ENTRIES = 1 << 28


@dataclass(frozen=True)
class CountBlock:
    """The observed counts of a block of consecutive locations of one batch, as their non-zero entries."""

    start: int
    end: int
    batch: int
    values: torch.Tensor  # (nnz,) counts x > 0
    flat_index: torch.Tensor  # (nnz,) row * G + gene, rows counted from ``start``


def block_terms(w, signatures, platform, background, overdispersion, detection, values, flat_index):
    """The μ-dependent part of the NB log-likelihood of one block of locations of one batch, and its gradients.

    With μ = (m_g Σ_f w_sf g_fg + s_g) y_s and α = α_g, the part is ``Σ x log μ − (x+α) log(α+μ)``, written
    ``−Σ_g α_g Σ_s log(α+μ)`` over every entry plus ``Σ x log(μ / (α+μ))`` over the non-zero counts only.
    (The rest, ``Σ α log α + log Γ(x+α) − log Γ(α)``, does not involve μ and is computed per batch elsewhere.)

    Parameters
    ----------
    w
        ``(n, F)`` cell abundance w_sf of the block's locations.
    signatures
        ``(F, G)`` g_fg.
    platform, background, overdispersion
        ``(1, G)`` m_g, and s_eg and α_eg of the block's batch.
    detection
        ``(n, 1)`` y_s.
    values, flat_index
        The block's non-zero counts (see :class:`CountBlock`).

    Returns
    -------
    The log-likelihood part (0-d) and its gradients with respect to ``w``, ``platform``, ``background``,
    ``detection`` and ``overdispersion`` (those of ``(1, G)`` tensors as ``(G,)``).
    """
    cell_part = w @ signatures  # Σ_f w_sf g_fg
    mu = torch.addcmul(background, cell_part, platform).mul_(detection)
    total = mu + overdispersion
    log_total = torch.log(total)
    inverse_total = total.reciprocal_()
    mu_observed = mu.view(-1).index_select(0, flat_index)
    inverse_observed = inverse_total.view(-1).index_select(0, flat_index)
    fraction_observed = mu_observed * inverse_observed  # μ / (α+μ) where x > 0
    log_lik = torch.dot(values, torch.log(fraction_observed)) - torch.dot(overdispersion.view(-1), log_total.sum(0))
    # ∂/∂μ is −α/(α+μ) everywhere, plus x/μ − x/(α+μ) where x > 0
    grad_mu = inverse_total.mul_(-overdispersion)
    # ∂/∂α = −log(α+μ) − α/(α+μ) everywhere, − x/(α+μ) where x > 0: summed over locations through a
    # location × gene scratch (a scatter-add onto repeated gene indices would be non-deterministic on a GPU)
    alpha_terms = grad_mu.clone()
    alpha_terms.view(-1).scatter_add_(0, flat_index, -values * inverse_observed)
    grad_alpha = alpha_terms.sum(0) - log_total.sum(0)
    grad_mu.view(-1).scatter_add_(0, flat_index, values * (1 - fraction_observed) / mu_observed)
    grad_detection = (grad_mu * mu).sum(1, keepdim=True) / detection  # ∂μ/∂y_s = μ / y_s
    grad_linear = grad_mu.mul_(detection)  # ∂/∂(m_g Σ_f w g + s)
    # m_g's gradient from the kept Σ_f w g: an element-wise product instead of a third matrix product
    grad_platform = (grad_linear * cell_part).sum(0)
    grad_w = grad_linear @ (signatures * platform).T
    return log_lik, grad_w, grad_platform, grad_linear.sum(0), grad_detection, grad_alpha


class _NegativeBinomialMeanTerms(torch.autograd.Function):
    """Σ over locations and genes of the μ-dependent NB terms (see :func:`block_terms`). Gradients are computed in
    the forward pass, block by block, so that no location × gene temporary outlives its block."""

    @staticmethod
    def forward(ctx, w, platform, background, detection, overdispersion, objective):
        grad_w = torch.empty_like(w)
        grad_platform = torch.zeros_like(platform)
        grad_background = torch.zeros_like(background)
        grad_detection = torch.empty_like(detection)
        grad_alpha = torch.zeros_like(overdispersion)
        log_lik = w.new_zeros(())
        for block in objective.blocks:
            rows, batch = slice(block.start, block.end), slice(block.batch, block.batch + 1)
            terms = block_terms(
                w[rows], objective.signatures, platform, background[batch], overdispersion[batch], detection[rows],
                block.values, block.flat_index,
            )
            log_lik += terms[0]
            grad_w[rows] = terms[1]
            grad_platform += terms[2]
            grad_background[batch] += terms[3]
            grad_detection[rows] = terms[4]
            grad_alpha[batch] += terms[5]
        ctx.save_for_backward(grad_w, grad_platform, grad_background, grad_detection, grad_alpha)
        return log_lik

    @staticmethod
    def backward(ctx, grad_output):
        return (*(grad * grad_output for grad in ctx.saved_tensors), None)


class MappingObjective:
    """The negative ELBO of the cell2location model under its mean-field guide, for one guide sample.

    Equal to Pyro's ``Trace_ELBO`` loss on :func:`~.model.model` with ``AutoNormal`` minus the constant
    ``Σ log Γ(x+1)`` (:attr:`log_factorial_total`), and much cheaper: it precomputes per batch and gene the
    histogram of counts, touches the observed counts only where they are not zero, and gets the gradient of the
    location × gene terms analytically, in the same pass as their value.

    Parameters
    ----------
    data
        The model's data; its device and dtype are used throughout.
    priors
        Fixed hyper-parameters.
    block_rows
        Locations per block of the likelihood. ``None``: :data:`CPU_BLOCK_ENTRIES` or :data:`GPU_BLOCK_ENTRIES`
        entries.
    """

    def __init__(self, data: MappingData, priors: MappingPriors = MappingPriors(), block_rows: int | None = None):
        self.data = data
        self.priors = priors
        self.layout = SiteLayout.for_data(data, priors)
        self.signatures = data.signatures
        self.batch_index = data.batch_index
        bounds = data.batch_bounds()
        self.locations_per_batch = data.counts.new_tensor([[end - start] for start, end in bounds])
        if block_rows is None:
            entries = GPU_BLOCK_ENTRIES if data.counts.device.type == "cuda" else CPU_BLOCK_ENTRIES
            block_rows = max(1, entries // data.n_genes)
        starts = [first for start, end in bounds for first in range(start, end, block_rows)]
        ends = [min(first + block_rows, end) for start, end in bounds for first in range(start, end, block_rows)]
        batches = [batch for batch, (start, end) in enumerate(bounds) for _ in range(start, end, block_rows)]
        self.cutoff = self._histogram_cutoff(zip(starts, ends))
        self._setup_blocks(starts, ends, batches)
        self._setup_constant_priors()

    def _histogram_cutoff(self, row_ranges) -> int:
        """K of :meth:`_setup_blocks`: the smallest count value (1 to :data:`HISTOGRAM_MAX_COUNT`) exceeded by at
        most E·G entries."""
        counts = self.data.counts
        top = HISTOGRAM_MAX_COUNT + 1
        frequency = torch.zeros(top + 1, dtype=torch.long, device=counts.device)
        for start, end in row_ranges:
            frequency += torch.bincount(counts[start:end].clamp(max=top).long().view(-1), minlength=top + 1)
        exceeding = frequency.flip(0).cumsum(0).flip(0)[1:].tolist()  # exceeding[k]: entries with x > k
        allowed = self.data.n_batches * self.data.n_genes
        return next((k for k in range(1, HISTOGRAM_MAX_COUNT) if exceeding[k] <= allowed), HISTOGRAM_MAX_COUNT)

    def _setup_blocks(self, starts: list[int], ends: list[int], batches: list[int]) -> None:
        """The non-zero counts of every block (:class:`CountBlock`), and the tables for Σ_s log Γ(x+α) − log Γ(α) =
        Σ_j #(x > j) log(α + j) per batch and gene, one block at a time (no whole-data temporary).

        ``exceedance[e, j, g]`` counts batch e's locations with x_sg > j, for j below the cutoff K
        (:meth:`_histogram_cutoff`); the rare larger counts get log Γ(x+α) − log Γ(K+α) each.
        """
        counts, E, G, K = self.data.counts, self.data.n_batches, self.data.n_genes, self.cutoff
        histogram = torch.zeros(E * K * G, dtype=torch.long, device=counts.device)
        large_values, large_batch, large_gene = [], [], []
        self.blocks, self.log_factorial_total = [], 0.0
        for start, end, batch in zip(starts, ends, batches):
            block = counts[start:end].reshape(-1)
            flat_index = torch.nonzero(block).squeeze(1)  # row-major: row * G + gene, rows counted from start
            values = block[flat_index]
            self.blocks.append(CountBlock(start, end, batch, values, flat_index))
            genes = flat_index % G
            # histogram[e, v - 1, g]: entries of batch e and gene g with min(x, K) == v
            histogram += torch.bincount((batch * K + values.clamp(max=K).long() - 1) * G + genes, minlength=E * K * G)
            large = values > K
            large_values.append(values[large])
            large_gene.append(genes[large])
            large_batch.append(torch.full_like(large_gene[-1], batch))
            self.log_factorial_total += float(torch.lgamma(values.double() + 1).sum())
        self.exceedance = exceedance_table(histogram.reshape(E, K, G), 1).to(counts.dtype)
        self.count_steps = count_steps(K, counts)
        self.large_values, self.large_batch, self.large_gene = (
            torch.cat(parts) for parts in (large_values, large_batch, large_gene)
        )

    def _setup_constant_priors(self) -> None:
        """Shape and rate of the sites whose priors do not depend on other sites, as tensors, once."""
        self.constant_priors = {
            site.name: tuple(self._tensor(value) for value in site.prior({}, self.data, self.priors))
            for site in SITES if not site.parents
        }

    def _tensor(self, value) -> torch.Tensor:
        like = self.data.counts
        return torch.as_tensor(value, dtype=like.dtype, device=like.device)

    def prior_parameters(self, v: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Gamma shape and rate of every site's prior given the other sites' values (:data:`~.sites.SITES`)."""

        def tensor(value) -> torch.Tensor:  # a fill, not a copy from the host: CUDA graphs can capture it
            return value if isinstance(value, torch.Tensor) else v["a"].new_full((), value)

        dependent = {
            site.name: tuple(tensor(value) for value in site.prior(v, self.data, self.priors))
            for site in SITES if site.parents
        }
        return {**self.constant_priors, **dependent}

    def log_prior(self, z: torch.Tensor, theta: torch.Tensor, v: dict[str, torch.Tensor]) -> torch.Tensor:
        """Σ over all sites of log Gamma(θ; shape, rate), using log θ = z (all sites flattened together)."""
        parameters = self.prior_parameters(v)
        shapes = self.layout.shapes
        shape = torch.cat([parameters[name][0].expand(shapes[name]).reshape(-1) for name in SITE_NAMES])
        rate = torch.cat([parameters[name][1].expand(shapes[name]).reshape(-1) for name in SITE_NAMES])
        return (shape * torch.log(rate) + (shape - 1) * z - rate * theta - torch.lgamma(shape)).sum()

    def log_likelihood(self, v: dict[str, torch.Tensor]) -> torch.Tensor:
        """log p(counts | sites) without the constant −Σ log Γ(x+1)."""
        alpha = v["v_eg"].pow(-2)  # (E, G)
        mean_terms = _NegativeBinomialMeanTerms.apply(v["w_sf"], v["m_g"], v["s_eg"], v["y_s"], alpha, self)
        alpha_log_alpha = (self.locations_per_batch * alpha * torch.log(alpha)).sum()
        # Σ_s log Γ(x+α) − log Γ(α): histogram part, then the counts above the cutoff one by one
        histogram = histogram_log_gamma_terms(self.exceedance, alpha.unsqueeze(1), self.count_steps)
        large = large_count_log_gamma_terms(self.large_values, alpha[self.large_batch, self.large_gene], self.cutoff)
        return mean_terms + alpha_log_alpha + histogram + large

    def negative_elbo(self, guide_parameters: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """−ELBO (without Σ log Γ(x+1)) for the guide sample ``θ = exp(loc + scale·eps)``.

        Parameters
        ----------
        guide_parameters
            ``(2, P)``: locations and unconstrained scales (see :func:`initial_guide_parameters`).
        eps
            ``(P,)`` standard normal noise.
        """
        loc, scale = guide_parameters[0], guide_scale(guide_parameters[1])
        z = loc + scale * eps
        theta = torch.exp(z)
        values = self.layout.split(theta)
        # −log q(θ): the normal density of z, and the Jacobian of θ = exp(z)
        neg_log_guide = (0.5 * eps.square() + torch.log(scale) + z).sum() + HALF_LOG_2PI * eps.numel()
        return -(self.log_prior(z, theta, values) + self.log_likelihood(values) + neg_log_guide)
