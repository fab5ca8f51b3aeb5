"""The fast objective of the cell2location mapping model: its negative ELBO under the mean-field guide, in torch.

Equal to Pyro's ``Trace_ELBO`` on :func:`~.pyro_model.model` with ``AutoNormal`` (the tests check loss and
gradients), and much cheaper: reparameterised log-normal draws; the Gamma log-densities of all sites in a few calls
over the flat vector of latent values (:meth:`MappingObjective.log_prior`); a negative-binomial likelihood written
without cancellation at large α that does no redundant work (the constant ``log Γ(x+1)`` left out,
``Σ_{j<x} log1p(j/α)`` from the non-zero entries of each gene's count histogram, the terms of every location × gene
entry and their gradient computed together by hand, block by block, zero counts never read: :mod:`.likelihood`).
Everything that depends only on the data is computed once.
"""

from __future__ import annotations

import math

import torch

from tissuemap.models.cell2location.densities import draw_guide, gamma_log_density, gamma_normaliser
from tissuemap.models.cell2location.likelihood import CountTables, NegativeBinomialMeanTerms
from tissuemap.models.cell2location.sites import (
    SITE_NAMES,
    SITES,
    MappingData,
    MappingPriors,
    SiteLayout,
    prior_means,
)
from tissuemap.models.negative_binomial import large_count_log1p_terms


class MappingObjective:
    """The negative ELBO of the cell2location model under its mean-field guide, for one guide sample.

    Equal to Pyro's ``Trace_ELBO`` loss on :func:`~.pyro_model.model` with ``AutoNormal`` minus the constant
    ``Σ log Γ(x+1)`` (:attr:`log_factorial_total`), and much cheaper (see the module's note).

    Parameters
    ----------
    data
        The model's data; its device and dtype are used throughout.
    priors
        Fixed hyper-parameters.
    block_rows
        Locations per block of the likelihood. ``None``: :data:`~.likelihood.CPU_BLOCK_ENTRIES` or
        :data:`~.likelihood.GPU_BLOCK_ENTRIES` entries.
    """

    def __init__(self, data: MappingData, priors: MappingPriors = MappingPriors(), block_rows: int | None = None):
        self.data = data
        self.priors = priors
        self.layout = SiteLayout.for_data(data, priors)
        self.batch_index = data.batch_index
        self.counts = CountTables(data.counts, data.signatures, data.batch_bounds(), block_rows)
        self.log_factorial_total = self.counts.log_factorial_total
        self.sizes = [math.prod(self.layout.shapes[name]) for name in SITE_NAMES]
        self._setup_priors()

    def _setup_priors(self) -> None:
        """What of the priors does not change during training, once: the shape and rate of every site whose prior
        depends on no other site, spread over its values (flat), and their Σ a log b − log Γ(a); for the other sites,
        how many values share each of their (shape, rate) pairs."""
        like = self.data.counts
        self.constant_shape, self.constant_rate, constant_normaliser = {}, {}, 0.0
        multiplicity, means = [], prior_means(self.data, self.priors)
        for site in SITES:
            shape = self.layout.shapes[site.name]
            if site.parents:
                a, _ = self._dependent_prior(site, means)
                multiplicity.append(torch.full((a.numel(),), math.prod(shape) // a.numel(), dtype=like.dtype))
                continue
            a, b = (torch.as_tensor(value, dtype=like.dtype, device=like.device).expand(shape).reshape(-1)
                    for value in site.prior({}, self.data, self.priors))
            self.constant_shape[site.name], self.constant_rate[site.name] = a, b
            constant_normaliser += float(gamma_normaliser(a.double(), b.double()))
        self.constant_normaliser = constant_normaliser
        self.multiplicity = torch.cat(multiplicity).to(like.device)

    def _dependent_prior(self, site, v: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Shape and rate of a site whose prior depends on others, broadcast to each other but not to the site's
        shape (a per-location shape shared by R groups stays one value per location)."""
        a, b = site.prior(v, self.data, self.priors)
        if not isinstance(a, torch.Tensor):  # a fill, not a copy from the host: CUDA graphs can capture it
            a = b.new_full((), a)
        if not isinstance(b, torch.Tensor):
            b = a.new_full((), b)
        return torch.broadcast_tensors(a, b)

    def log_prior(self, z: torch.Tensor, theta: torch.Tensor, v: dict[str, torch.Tensor]) -> torch.Tensor:
        """Σ over all sites of log Gamma(θ; a, b) (:func:`.densities.gamma_log_density`), using log θ = z (flat)."""
        shape, rate, normaliser = self._spread_priors(v)
        return gamma_log_density(shape, rate, z, theta, normaliser)

    def _spread_priors(self, v: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Shape a and rate b of every value's prior, flat ``(P,)``, and Σ a log b − log Γ(a) over all values.

        The (a, b) of the sites whose prior depends on others are computed once per distinct pair (a per-location
        shape shared by R groups is one value, not R) and spread over the flat vector only for the products with z
        and θ: a few vectorised calls for all sites.
        """
        shapes, rates, dependent_shapes, dependent_rates = [], [], [], []
        for site in SITES:
            if not site.parents:
                shapes.append(self.constant_shape[site.name])
                rates.append(self.constant_rate[site.name])
                continue
            a, b = self._dependent_prior(site, v)
            dependent_shapes.append(a.reshape(-1))
            dependent_rates.append(b.reshape(-1))
            site_shape = self.layout.shapes[site.name]
            shapes.append(a.expand(site_shape).reshape(-1))
            rates.append(b.expand(site_shape).reshape(-1))
        a, b = torch.cat(dependent_shapes), torch.cat(dependent_rates)
        normaliser = gamma_normaliser(a, b, self.multiplicity) + self.constant_normaliser
        return torch.cat(shapes), torch.cat(rates), normaliser

    def log_likelihood(self, v: dict[str, torch.Tensor]) -> torch.Tensor:
        """log p(counts | sites) without the constant −Σ log Γ(x+1)."""
        alpha = v["v_eg"].pow(-2)  # (E, G)
        counts = self.counts
        mean_terms = NegativeBinomialMeanTerms.apply(v["w_sf"], v["m_g"], v["s_eg"], v["y_s"], alpha, counts)
        # Σ_s Σ_{j<x} log1p(j/α): histogram part, then the counts above the cutoff one by one
        histogram = counts.exceedance(alpha)
        large = large_count_log1p_terms(counts.large_values, counts.large_pairs, alpha, counts.cutoff,
                                        counts.large_counts, counts.large_excess)
        return mean_terms + histogram + large

    def negative_elbo(self, guide_parameters: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """−ELBO (without Σ log Γ(x+1)) for the guide sample ``θ = exp(loc + scale·eps)``.

        Parameters
        ----------
        guide_parameters
            ``(2, P)``: locations and unconstrained scales (see :func:`initial_guide_parameters`).
        eps
            ``(P,)`` standard normal noise.
        """
        z, minus_log_q = draw_guide(guide_parameters, eps)
        theta = torch.exp(z)
        # one split (its gradient is one concatenation), then every site's view at its shape
        values = {name: part.view(self.layout.shapes[name])
                  for name, part in zip(SITE_NAMES, theta.split(self.sizes))}
        return -(self.log_prior(z, theta, values) + minus_log_q + self.log_likelihood(values))
