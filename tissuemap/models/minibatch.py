"""Minibatch (stochastic variational) objective of the cell2location mapping model: N locations per step.

The model and the guide are those of :mod:`tissuemap.models.cell2location`; only the estimate of the ELBO changes.
All samples form one joint model:

- the *global* sites (m̄, u_m, m_g, k_r, x_rf, y_e, a, m_e, u_e, s_eg, φ, v_eg) are shared: their prior and guide
  terms enter every step exactly;
- the *local* sites of a location (:data:`LOCAL_SITES`: n_s, b_s, z_sr, w_sf, y_s) enter only when the location is
  in the batch: their prior and guide terms and the μ-dependent likelihood terms of the batch's counts are scaled by
  S/N (S locations in all, N in the batch), so that the loss is an unbiased estimate of the full-data loss;
- the likelihood terms that depend on the global α_eg and the data only (``Σ α log α``, ``Σ log Γ(x+α) − log Γ(α)``)
  are computed exactly, every step, from full-data tables (E × K × G, see :func:`count_tables`): no noise from them.

Over an epoch (a partition of the locations into batches), the batches' losses and gradients weighted by N_b/S sum to
the full-data ones for the same guide noise; with equal batch sizes that is their mean (``tests/test_minibatch.py``).

Counts stay sparse (torch CSR, on the model's device); a batch's non-zero counts are gathered by index selection on
the device. Each step reads two small vectors back to the host (the batch's locations per slide and the counts per
block), which sizes the blocks: memory is bounded by the batch, not the data.

Guide parameters are held split (:class:`SplitLayout`): the global sites as one ``(2, P_global)`` tensor, the local
sites as a ``(2, S, L)`` table with one row of L values per location (``L = 3 + R + F``).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from types import SimpleNamespace

import torch

from tissuemap.models.cell2location import (
    CPU_BLOCK_ENTRIES,
    GPU_BLOCK_ENTRIES,
    HALF_LOG_2PI,
    MAX_HISTOGRAM_COUNT,
    SITE_NAMES,
    CountBlock,
    MappingData,
    MappingObjective,
    MappingPriors,
    SiteLayout,
    _NegativeBinomialMeanTerms,
    guide_scale,
)

# Sites with one value (or one row) per location, in model order; every other site is global.
LOCAL_SITES = ("n_s", "b_s", "z_sr", "w_sf", "y_s")


class SplitLayout:
    """The guide's flat ``(2, P)`` parameters (:class:`SiteLayout`) as a global vector and a per-location table."""

    def __init__(self, layout: SiteLayout):
        self.layout = layout
        self.n_locations = layout.shapes["n_s"][0]
        self.global_names = tuple(name for name in SITE_NAMES if name not in LOCAL_SITES)
        self.global_offsets, offset = {}, 0
        for name in self.global_names:
            self.global_offsets[name] = offset
            offset += math.prod(layout.shapes[name])
        self.global_size = offset
        self.local_columns, column = {}, 0
        for name in LOCAL_SITES:
            width = layout.shapes[name][1]
            self.local_columns[name] = slice(column, column + width)
            column += width
        self.local_width = column

    def split(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(..., P)`` -> global ``(..., P_global)`` and local ``(..., S, L)``."""
        sites, lead = self.layout.split(flat), flat.shape[:-1]
        global_part = torch.cat([sites[name].reshape(*lead, -1) for name in self.global_names], -1)
        return global_part, torch.cat([sites[name] for name in LOCAL_SITES], -1)

    def join(self, global_part: torch.Tensor, local: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`split` for ``(2, ...)`` parameters: the ``(2, P)`` tensor in :class:`SiteLayout` order."""
        return torch.stack([self.layout.join({**self.global_sites(global_part[row]), **self.local_sites(local[row])})
                            for row in range(global_part.shape[0])])

    def global_sites(self, global_part: torch.Tensor) -> dict[str, torch.Tensor]:
        """Views of a ``(P_global,)`` vector as every global site's shape."""
        return {name: global_part[self.global_offsets[name]: self.global_offsets[name] + math.prod(shape)]
                .reshape(shape) for name, shape in ((n, self.layout.shapes[n]) for n in self.global_names)}

    def local_sites(self, local: torch.Tensor) -> dict[str, torch.Tensor]:
        """Views of an ``(n, L)`` table as every local site's ``(n, width)``."""
        return {name: local[..., columns] for name, columns in self.local_columns.items()}


def csr_counts(indptr, indices, values, shape: tuple[int, int], device=None) -> torch.Tensor:
    """A torch sparse CSR tensor of counts (``indptr``, ``indices``, ``values`` as scipy's CSR holds them, indices
    made int64), without torch's one-time "beta" warning in the user's log."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta state")
        return torch.sparse_csr_tensor(torch.as_tensor(indptr, dtype=torch.int64, device=device),
                                       torch.as_tensor(indices, dtype=torch.int64, device=device),
                                       torch.as_tensor(values, device=device), size=shape,
                                       check_invariants=False)  # scipy built it: valid


@dataclass(frozen=True)
class CountTables:
    """What the likelihood needs of the full data beyond the μ-dependent terms (see :func:`count_tables`)."""

    cutoff: int  # K: counts up to K enter Σ log Γ(x+α) through the histogram
    exceedance: torch.Tensor  # (E, K, G): locations of slide e with x_sg > j
    count_steps: torch.Tensor  # (1, K, 1): j = 0 .. K-1
    large_values: torch.Tensor  # counts above K, one by one, with their slide and gene
    large_batch: torch.Tensor
    large_gene: torch.Tensor
    log_factorial_total: float  # Σ log Γ(x+1), the constant left out of the loss


def count_tables(values: torch.Tensor, genes: torch.Tensor, slides: torch.Tensor, n_batches: int,
                 n_genes: int) -> CountTables:
    """Histogram tables of the non-zero counts ``values`` (with each one's gene and slide), as
    :class:`MappingObjective` builds them from dense counts: the same cutoff K (the smallest count value, 1 to
    ``MAX_HISTOGRAM_COUNT``, exceeded by at most E·G entries; zeros never exceed it) and the same tables."""
    E, G = n_batches, n_genes
    top = MAX_HISTOGRAM_COUNT + 1
    frequency = torch.bincount(values.clamp(max=top).long(), minlength=top + 1)
    exceeding = frequency.flip(0).cumsum(0).flip(0)[1:].tolist()  # exceeding[k]: entries with x > k
    K = next((k for k in range(1, MAX_HISTOGRAM_COUNT) if exceeding[k] <= E * G), MAX_HISTOGRAM_COUNT)
    histogram = torch.bincount((slides * K + values.clamp(max=K).long() - 1) * G + genes, minlength=E * K * G)
    large = values > K
    return CountTables(
        cutoff=K,
        exceedance=histogram.reshape(E, K, G).flip(1).cumsum(1).flip(1).to(values.dtype),
        count_steps=torch.arange(K, dtype=values.dtype, device=values.device).reshape(1, K, 1),
        large_values=values[large], large_batch=slides[large], large_gene=genes[large],
        log_factorial_total=float(torch.lgamma(values.double() + 1).sum()),
    )


@dataclass(frozen=True)
class Batch:
    """The locations of one step and their non-zero counts, in blocks of one slide each (:class:`CountBlock`, rows
    counted within the batch). ``ids`` are sorted, so that each slide's locations are contiguous."""

    ids: torch.Tensor  # (N,) location indices, ascending
    slides: torch.Tensor  # (N,) slide of each
    blocks: list[CountBlock]
    signatures: torch.Tensor  # (F, G), for _NegativeBinomialMeanTerms

    @property
    def size(self) -> int:
        return self.ids.numel()


def gamma_log_density(shape, rate, z, theta) -> torch.Tensor:
    """Σ log Gamma(θ; shape, rate) with log θ = z given (shape and rate broadcast to θ's shape)."""
    return (shape * torch.log(rate) + (shape - 1) * z - rate * theta - torch.lgamma(shape)).sum()


class MinibatchObjective:
    """The negative ELBO of the cell2location model estimated from a batch of locations (see the module's note).

    Parameters
    ----------
    data
        The model's data with ``counts`` a torch sparse CSR tensor (S × G) on the model's device.
    priors
        Fixed hyper-parameters.
    block_rows
        Locations per block of the likelihood; ``None``: as :class:`MappingObjective` chooses.
    """

    def __init__(self, data: MappingData, priors: MappingPriors = MappingPriors(), block_rows: int | None = None):
        counts = data.counts
        if counts.layout != torch.sparse_csr:
            raise ValueError("MinibatchObjective needs the counts as a torch sparse CSR tensor")
        self.data, self.priors = data, priors
        self.layout = SplitLayout(SiteLayout.for_data(data, priors))
        self.indptr = counts.crow_indices().long()
        self.genes = counts.col_indices().long()
        self.values = counts.values()
        self.signatures = data.signatures
        E, G = data.n_batches, data.n_genes
        self.locations_per_batch = torch.bincount(data.batch_index, minlength=E).to(self.values.dtype).reshape(E, 1)
        entry_rows = torch.repeat_interleave(torch.arange(data.n_locations, device=counts.device),
                                             self.indptr.diff())
        self.tables = count_tables(self.values, self.genes, data.batch_index[entry_rows], E, G)
        self.log_factorial_total = self.tables.log_factorial_total
        if block_rows is None:
            entries = GPU_BLOCK_ENTRIES if counts.device.type == "cuda" else CPU_BLOCK_ENTRIES
            block_rows = max(1, entries // G)
        self.block_rows = block_rows
        # the full-data objective's prior formulas, asked with the batch's rows (see _prior_parameters)
        full = SimpleNamespace(priors=priors, data=data)
        MappingObjective._setup_constant_priors(full)
        self.constant_priors = full.constant_priors

    def batch(self, ids: torch.Tensor) -> Batch:
        """The batch of locations ``ids`` (unique; any order), its non-zero counts gathered on the device."""
        ids = ids.sort().values
        slides = self.data.batch_index[ids]
        starts = self.indptr[ids]
        lengths = self.indptr[ids + 1] - starts
        G, E = self.data.n_genes, self.data.n_batches
        per_slide = torch.bincount(slides, minlength=E).tolist()  # host read 1: rows of each slide
        bounds, first = [], 0
        for slide, rows in enumerate(per_slide):
            bounds += [(start, min(start + self.block_rows, first + rows), slide)
                       for start in range(first, first + rows, self.block_rows)]
            first += rows
        entry_ends = lengths.cumsum(0)
        block_ends = entry_ends[torch.tensor([end - 1 for _, end, _ in bounds], device=ids.device)].tolist()  # read 2
        total = block_ends[-1]
        row_of_entry = torch.repeat_interleave(torch.arange(ids.numel(), device=ids.device), lengths,
                                               output_size=total)
        # position in the CSR arrays: the row's start there, minus where the row starts in the batch, plus the rank
        entry = torch.repeat_interleave(starts - (entry_ends - lengths), lengths, output_size=total)
        entry += torch.arange(total, device=ids.device)
        values, genes = self.values.index_select(0, entry), self.genes.index_select(0, entry)
        blocks, entry_start = [], 0
        for (start, end, slide), entry_end in zip(bounds, block_ends):
            part = slice(entry_start, entry_end)
            blocks.append(CountBlock(start, end, slide, values[part], (row_of_entry[part] - start) * G + genes[part]))
            entry_start = entry_end
        return Batch(ids, slides, blocks, self.signatures)

    def _prior_parameters(self, v: dict[str, torch.Tensor], batch: Batch) -> dict:
        """Gamma shape and rate of every site's prior (:meth:`MappingObjective.prior_parameters`), the per-location
        ones for the batch's rows."""
        data = self.data
        rows = SimpleNamespace(n_types=data.n_types, detection_alpha=data.detection_alpha[batch.ids])
        constant = {**self.constant_priors, "n_s": (data.n_cells_per_location[batch.ids], self.constant_priors["n_s"][1])}
        view = SimpleNamespace(priors=self.priors, data=rows, batch_index=batch.slides, constant_priors=constant)
        return MappingObjective.prior_parameters(view, v)

    def exact_likelihood_terms(self, alpha: torch.Tensor) -> torch.Tensor:
        """``Σ_s Σ_g α log α + log Γ(x+α) − log Γ(α)`` over all the data, exactly (``alpha``: (E, G) α_eg)."""
        tables = self.tables
        alpha_log_alpha = (self.locations_per_batch * alpha * torch.log(alpha)).sum()
        histogram = (tables.exceedance * torch.log(alpha.unsqueeze(1) + tables.count_steps)).sum()
        large_alpha = alpha[tables.large_batch, tables.large_gene]
        large = (torch.lgamma(tables.large_values + large_alpha) - torch.lgamma(tables.cutoff + large_alpha)).sum()
        return alpha_log_alpha + histogram + large

    def negative_elbo(self, global_parameters: torch.Tensor, local_parameters: torch.Tensor,
                      global_eps: torch.Tensor, local_eps: torch.Tensor, batch: Batch,
                      scale: float | None = None) -> torch.Tensor:
        """Estimate of −ELBO (without Σ log Γ(x+1)) from ``batch``, for the guide sample ``θ = exp(loc + σ·eps)``.

        Parameters
        ----------
        global_parameters
            ``(2, P_global)`` locations and unconstrained scales of the global sites.
        local_parameters
            ``(2, N, L)`` those of the batch's locations, rows in ``batch.ids`` order.
        global_eps, local_eps
            ``(P_global,)`` and ``(N, L)`` standard normal noise.
        scale
            Weight of the local terms; ``None``: S/N, the unbiased estimate.
        """
        scale = self.data.n_locations / batch.size if scale is None else scale
        global_z, global_term = _draw(global_parameters, global_eps)
        local_z, local_term = _draw(local_parameters, local_eps)
        z = {**self.layout.global_sites(global_z), **self.layout.local_sites(local_z)}
        theta = {name: torch.exp(value) for name, value in z.items()}
        parameters = self._prior_parameters(theta, batch)

        def log_prior(names):
            return sum(gamma_log_density(*parameters[name], z[name], theta[name]) for name in names)

        alpha = theta["v_eg"].pow(-2)
        mean_terms = _NegativeBinomialMeanTerms.apply(theta["w_sf"], theta["m_g"], theta["s_eg"], theta["y_s"],
                                                      alpha, batch)
        exact = log_prior(self.layout.global_names) + self.exact_likelihood_terms(alpha) + global_term
        estimated = log_prior(LOCAL_SITES) + mean_terms + local_term
        return -(exact + scale * estimated)


def _draw(parameters: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``z = loc + σ·eps`` and −log q of the draw (its normal density and the Jacobian of θ = exp(z))."""
    loc, scale = parameters[0], guide_scale(parameters[1])
    z = loc + scale * eps
    return z, (0.5 * eps.square() + torch.log(scale) + z).sum() + HALF_LOG_2PI * eps.numel()
