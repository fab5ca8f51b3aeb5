"""Minibatch (stochastic variational) objective of the cell2location mapping model: N locations per step.

The model and the guide are those of :mod:`tissuemap.models.cell2location`; only the estimate of the ELBO changes.
All samples form one joint model:

- the *global* sites (m̄, u_m, m_g, k_r, x_rf, y_e, a, m_e, u_e, s_eg, φ, v_eg) are shared: their prior and guide
  terms enter every step exactly;
- the *local* sites of a location (:data:`~.sites.LOCATION_SITES`: n_s, b_s, z_sr, w_sf, y_s) enter only when the
  location is in the batch: their prior and guide terms and the whole likelihood of the batch's counts are scaled by
  S/N (S locations in all, N in the batch), so that the loss is an unbiased estimate of the full-data loss.

The batch's likelihood is the full-data objective's (:mod:`.likelihood`: the same blocks and hand-written gradients,
over the batch's rows), written without large, nearly cancelling terms at large α. Its terms that involve only α_eg
and the counts (the count histogram's) are estimated from the batch too, not computed exactly from the full data:
with exact full-data terms the loss estimate swung by up to 1e18 after ~200 epochs on 2 × 2,000 simulated spots;
with the likelihood's earlier form (α log α − α log(α+μ) apart) estimated from the batch, the fit learned to exploit
float32 rounding at large α (the loss fell to half the full-data fit's while the guides of some α widened to σ > 4;
benchmarks/RESULTS.md, "Minibatch mapping").

Over an epoch (a partition of the locations into batches), the batches' losses and gradients weighted by N_b/S sum to
the full-data ones for the same guide noise; with equal batch sizes that is their mean (``tests/test_minibatch.py``).

Counts stay sparse (torch CSR, on the model's device); a batch's non-zero counts are gathered by index selection on
the device. Each step reads two small vectors back to the host (the batch's locations per slide and the counts per
block), which sizes the blocks: the location × gene temporaries are bounded by the batch (the sparse counts and the
per-location parameters, S × L with their optimiser moments, stay whole).

Guide parameters are held split (:class:`SplitLayout`): the global sites as one ``(2, P_global)`` tensor, the local
sites as a ``(2, S, L)`` table with one row of L values per location (``L = 3 + R + F``).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import warnings
from dataclasses import dataclass

import torch

from tissuemap.models.cell2location.densities import draw_guide, gamma_log_density
from tissuemap.models.cell2location.likelihood import (
    CountBlock,
    CountScratch,
    HistogramTables,
    NegativeBinomialMeanTerms,
    block_ranges,
    default_block_rows,
    histogram_cutoff,
)
from tissuemap.models.cell2location.sites import (
    LOCATION_SITES,
    SITE_NAMES,
    SITES,
    MappingData,
    MappingPriors,
    SiteLayout,
)
from tissuemap.models.negative_binomial import count_steps, histogram_log1p_terms, large_count_log1p_terms


class SplitLayout:
    """The guide's flat ``(2, P)`` parameters (:class:`SiteLayout`) as a global vector and a per-location table."""

    def __init__(self, layout: SiteLayout):
        self.layout = layout
        self.n_locations = layout.shapes["n_s"][0]
        self.global_names = tuple(name for name in SITE_NAMES if name not in LOCATION_SITES)
        self.global_offsets, offset = {}, 0
        for name in self.global_names:
            self.global_offsets[name] = offset
            offset += math.prod(layout.shapes[name])
        self.global_size = offset
        self.local_columns, column = {}, 0
        for name in LOCATION_SITES:
            width = layout.shapes[name][1]
            self.local_columns[name] = slice(column, column + width)
            column += width
        self.local_width = column

    def split(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(..., P)`` -> global ``(..., P_global)`` and local ``(..., S, L)``."""
        sites, lead = self.layout.split(flat), flat.shape[:-1]
        global_part = torch.cat([sites[name].reshape(*lead, -1) for name in self.global_names], -1)
        return global_part, torch.cat([sites[name] for name in LOCATION_SITES], -1)

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


def as_csr(counts: torch.Tensor) -> torch.Tensor:
    """``counts`` as a torch sparse CSR tensor (dense counts converted, on their device)."""
    if counts.layout == torch.sparse_csr:
        return counts
    rows, genes = counts.nonzero(as_tuple=True)
    indptr = torch.nn.functional.pad(torch.bincount(rows, minlength=counts.shape[0]).cumsum(0), (1, 0))
    return csr_counts(indptr, genes, counts[rows, genes], tuple(counts.shape), counts.device)


@dataclass(frozen=True)
class Batch:
    """The locations of one step and their non-zero counts, in blocks of one slide each (:class:`CountBlock`, rows
    counted within the batch), with what :class:`~.likelihood.NegativeBinomialMeanTerms` reads of them. ``ids`` are
    sorted, so that each slide's locations are contiguous."""

    ids: torch.Tensor  # (N,) location indices, ascending
    slides: torch.Tensor  # (N,) slide of each
    blocks: list[CountBlock]
    tables: HistogramTables  # of the batch's counts
    signatures: torch.Tensor  # (F, G)
    scratch: CountScratch  # for the batch's largest block

    @property
    def size(self) -> int:
        return self.ids.numel()

    @property
    def totals(self) -> torch.Tensor:
        """``(E, G)`` Σ x over the batch's locations of each slide."""
        return self.tables.totals


class MinibatchObjective:
    """The negative ELBO of the cell2location model estimated from a batch of locations (see the module's note).

    Parameters
    ----------
    data
        The model's data; ``counts`` a torch sparse CSR tensor (S × G) on the model's device (dense counts are
        converted).
    priors
        Fixed hyper-parameters.
    block_rows
        Locations per block of the likelihood; ``None``: as the full-data objective chooses
        (:func:`~.likelihood.default_block_rows`).
    """

    def __init__(self, data: MappingData, priors: MappingPriors = MappingPriors(), block_rows: int | None = None):
        data = dataclasses.replace(data, counts=as_csr(data.counts))
        counts = data.counts
        self.data, self.priors = data, priors
        self.layout = SplitLayout(SiteLayout.for_data(data, priors))
        self.indptr = counts.crow_indices().long()
        self.genes = counts.col_indices().long()
        self.values = counts.values()
        self.signatures = data.signatures
        self.cutoff = histogram_cutoff([self.values], data.n_batches, data.n_genes)
        self.count_steps = count_steps(self.cutoff, self.values)
        self.log_factorial_total = float(torch.lgamma(self.values.double() + 1).sum())
        self.block_rows = default_block_rows(data.n_genes, counts.device) if block_rows is None else block_rows

    def batch(self, ids: torch.Tensor) -> Batch:
        """The batch of locations ``ids`` (unique; any order), its non-zero counts gathered on the device."""
        ids = ids.sort().values
        slides = self.data.batch_index[ids]
        starts = self.indptr[ids]
        lengths = self.indptr[ids + 1] - starts
        G, E = self.data.n_genes, self.data.n_batches
        per_slide = torch.bincount(slides, minlength=E).tolist()  # host read 1: rows of each slide
        slide_ends = list(itertools.accumulate(per_slide))
        bounds = block_ranges(list(zip([0, *slide_ends[:-1]], slide_ends)), self.block_rows)
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
            blocks.append(CountBlock(start, end, slide, values[part], -values[part],
                                     (row_of_entry[part] - start) * G + genes[part]))
            entry_start = entry_end
        entry_slides = torch.repeat_interleave(slides, lengths, output_size=total)
        tables = HistogramTables.build([(values, genes, entry_slides)], E, G, self.cutoff)
        scratch = CountScratch(max(end - start for start, end, _ in bounds) * G, self.values)
        return Batch(ids, slides, blocks, tables, self.signatures, scratch)

    def _prior_parameters(self, v: dict[str, torch.Tensor], batch: Batch) -> dict:
        """Gamma shape and rate of every site's prior (:data:`~.sites.SITES`), the per-location ones for the batch's
        rows: the table's priors asked with the data of the batch's locations."""
        data = self.data
        rows = dataclasses.replace(data, batch_index=batch.slides, n_cells_per_location=data.n_cells_per_location[
            batch.ids], detection_alpha=data.detection_alpha[batch.ids])

        def tensor(value) -> torch.Tensor:
            return value if isinstance(value, torch.Tensor) else v["a"].new_full((), value)

        return {site.name: tuple(tensor(value) for value in site.prior(v, rows, self.priors)) for site in SITES}

    def log_likelihood(self, theta: dict[str, torch.Tensor], batch: Batch) -> torch.Tensor:
        """log p(the batch's counts | sites) without the constant −Σ log Γ(x+1), as the full-data objective writes it
        (:mod:`.likelihood`), over the batch's rows."""
        alpha = theta["v_eg"].pow(-2)  # (E, G)
        mean_terms = NegativeBinomialMeanTerms.apply(theta["w_sf"], theta["m_g"], theta["s_eg"], theta["y_s"], alpha,
                                                     batch)
        tables = batch.tables
        histogram = histogram_log1p_terms(tables.exceedance, alpha.unsqueeze(1), self.count_steps)
        large = large_count_log1p_terms(tables.large_values, tables.large_pairs, alpha, self.cutoff,
                                        tables.large_counts, tables.large_excess)
        return mean_terms + histogram + large

    def negative_elbo(self, global_parameters: torch.Tensor, local_parameters: torch.Tensor,
                      global_eps: torch.Tensor, local_eps: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Estimate of −ELBO (without Σ log Γ(x+1)) from ``batch``, for the guide sample ``θ = exp(loc + σ·eps)``.

        Parameters
        ----------
        global_parameters
            ``(2, P_global)`` locations and unconstrained scales of the global sites.
        local_parameters
            ``(2, N, L)`` those of the batch's locations, rows in ``batch.ids`` order.
        global_eps, local_eps
            ``(P_global,)`` and ``(N, L)`` standard normal noise.
        """
        scale = self.data.n_locations / batch.size  # the batch's terms stand for all S locations
        global_z, global_term = draw_guide(global_parameters, global_eps)
        local_z, local_term = draw_guide(local_parameters, local_eps)
        z = {**self.layout.global_sites(global_z), **self.layout.local_sites(local_z)}
        theta = {name: torch.exp(value) for name, value in z.items()}
        parameters = self._prior_parameters(theta, batch)

        def log_prior(names):
            return sum(gamma_log_density(*parameters[name], z[name], theta[name]) for name in names)

        exact = log_prior(self.layout.global_names) + global_term
        estimated = log_prior(LOCATION_SITES) + self.log_likelihood(theta, batch) + local_term
        return -(exact + scale * estimated)

