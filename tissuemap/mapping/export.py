"""The mapping's posterior exported: exact log-normal summaries of every site under the trained guide, each sample's
AnnData in the cell2location package's naming, its expected counts and the counts split among cell types."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pandas as pd
import scipy.sparse as sp

from tissuemap.mapping.data import SpatialSample
from tissuemap.mapping.fit_record import MappingFit
from tissuemap.mapping.setup import MappingSetup

SUMMARIES = ("means", "stds", "q05", "q95")
# guide values whose posterior summaries are computed at once (a few MiB of float64 temporaries), and what chunks
# start at a multiple of: above twice the widest SIMD vector of float64 (torch's vectorised loops take two at a time)
EXPORT_CHUNK_VALUES = 1 << 18
EXPORT_CHUNK_ALIGNMENT = 64
# spot × gene entries of the expected-expression layers' dense chunk (32 MiB of float64)
LAYER_CHUNK_ENTRIES = 1 << 22


def mapping_summaries(setup: MappingSetup, fit: MappingFit,
                      chunk_values: int = EXPORT_CHUNK_VALUES) -> dict[str, dict[str, np.ndarray]]:
    """``means``, ``stds``, ``q05`` and ``q95`` of every site under the trained guide, exact (log-normal), as numpy
    arrays of the sites' shapes: ``summaries[k][site]``.

    The guide's values are summarised ``chunk_values`` at a time (float64 on the guide's device, then into the host
    arrays; the per-location sites are most of them, so a chunk is a few thousand locations' rows), so that no
    whole-sample temporary is made beyond the summaries themselves. Chunks start at multiples of
    :data:`EXPORT_CHUNK_ALIGNMENT` values, where torch's vectorised loops start too: every value goes through the
    same (vector or scalar) code as in one piece, and the summaries are bitwise those of one piece (one thread).
    """
    from tissuemap.models.cell2location import SiteLayout, guide_scale
    from tissuemap.models.posterior import lognormal_summaries

    if chunk_values % EXPORT_CHUNK_ALIGNMENT:
        raise ValueError(f"chunk_values must be a multiple of {EXPORT_CHUNK_ALIGNMENT}")
    layout = SiteLayout.for_data(setup.data, setup.priors)
    parameters = fit.guide_parameters
    flat = {k: np.empty(layout.size, dtype=np.float64) for k in SUMMARIES}
    for start in range(0, layout.size, chunk_values):
        loc, raw_scale = parameters[:, start: start + chunk_values].double()
        for k, values in lognormal_summaries(loc, guide_scale(raw_scale)).items():
            flat[k][start: start + chunk_values] = values.cpu().numpy()
    return {k: layout.split(values) for k, values in flat.items()}


def _sample_sites(setup: MappingSetup, summary: dict[str, np.ndarray], name: str) -> dict[str, np.ndarray]:
    """One summary of every site restricted to a sample: its locations' rows and its batch's row."""
    from tissuemap.models.cell2location import BATCH_SITES, LOCATION_SITES

    rows, batch = setup.rows[name], setup.sample_batch[name]
    return {
        site: values[rows] if site in LOCATION_SITES else values[batch: batch + 1] if site in BATCH_SITES else values
        for site, values in summary.items()
    }


def _scaled_signatures(setup: MappingSetup, means: dict[str, np.ndarray]) -> np.ndarray:
    """(F, G) g_fg · E[m_g]: expected molecules per cell of each type at detection 1."""
    return setup.data.signatures.double().cpu().numpy() * means["m_g"]


def expected_spot_counts(setup: MappingSetup, means: dict[str, np.ndarray], name: str, rows: np.ndarray) -> np.ndarray:
    """Posterior mean of μ_sg for the given rows (positions within sample ``name``): exact under the mean-field guide,
    where the sites are independent and the mean of the product is the product of the means."""
    sample_rows = np.arange(setup.rows[name].start, setup.rows[name].stop)[rows]
    batch = setup.sample_batch[name]
    cell_part = means["w_sf"][sample_rows] @ _scaled_signatures(setup, means)
    return (cell_part + means["s_eg"][batch]) * means["y_s"][sample_rows]


def expected_expression_layers(counts, w_means: np.ndarray, scaled_signatures: np.ndarray, background: np.ndarray,
                               cell_types: list[str], chunk_spots: int | None = None) -> dict[str, sp.csr_matrix]:
    """Split every observed count among the cell types (spec §3): type f gets the share
    ``w_sf g_fg m_g / (Σ_f' w_sf' g_f'g m_g + s_eg)`` of x_sg. Returns one sparse layer per type (zeros stay zero).

    Computed ``chunk_spots`` spots at a time: the temporaries (the chunk's dense expected counts, its shares) are
    bounded by the chunk, not the sample; only the layers themselves are whole-sample.

    Parameters
    ----------
    counts
        ``(S, G)`` observed counts of one sample (sparse or dense).
    w_means, scaled_signatures, background
        ``(S, F)`` E[w_sf], ``(F, G)`` g_fg E[m_g] and ``(G,)`` E[s_eg] of the sample's batch.
    chunk_spots
        Spots per chunk; ``None``: about 4 M spot × gene entries per chunk.
    """
    counts = sp.csr_matrix(counts)
    if not counts.has_sorted_indices:
        counts = counts.copy()
        counts.sort_indices()
    n_spots = counts.shape[0]
    chunk = chunk_spots or max(1, LAYER_CHUNK_ENTRIES // max(1, counts.shape[1]))
    values = [np.empty(counts.nnz, dtype=np.float32) for _ in cell_types]
    for start in range(0, n_spots, chunk):
        end = min(start + chunk, n_spots)
        first, last = counts.indptr[start], counts.indptr[end]
        rows = np.repeat(np.arange(end - start), np.diff(counts.indptr[start: end + 1]))
        genes = counts.indices[first:last]
        w_chunk = w_means[start:end]
        # Σ_f w_sf g_fg m_g + s_g at the chunk's non-zero entries
        dense = w_chunk @ scaled_signatures + background
        share = counts.data[first:last].astype(np.float64) / dense[rows, genes]
        for f, layer_values in enumerate(values):
            layer_values[first:last] = share * w_chunk[rows, f] * scaled_signatures[f, genes]
    return {cell_type: sp.csr_matrix((layer_values, counts.indices.copy(), counts.indptr.copy()), shape=counts.shape)
            for cell_type, layer_values in zip(cell_types, values)}


def _settings(setup: MappingSetup, fit: MappingFit, sample: SpatialSample) -> dict:
    """What the fit was run with, for ``uns['mod']`` (h5ad-storable: no None)."""
    return {
        "model_name": "cell2location (tissuemap, Pyro)",
        "n_cells_per_location": sample.n_cells_per_location,
        "cell_counts": sample.cell_counts_path,
        "detection_alpha": sample.detection_alpha,
        "detection_mean": float(setup.data.detection_mean),
        "batch": sample.slide,
        "batch_names": list(setup.batch_names),
        "samples_fitted_together": [s.name for s in setup.samples],
        "genes_matched_by": setup.gene_match.key,
        "max_epochs": fit.steps,
        "lr": fit.lr,
        "seed": fit.seed,
        "device": fit.device,
        "priors": asdict(setup.priors),
    }


def export_mapping(
    setup: MappingSetup,
    fit: MappingFit,
    expected_expression: bool = False,
    summaries: dict | None = None,
) -> dict:
    """Each sample's posterior in an AnnData, named as the cell2location package names it.

    Every returned AnnData is its sample subset to the shared genes (raw counts in ``X``) with:

    - ``obsm['{k}_cell_abundance_w_sf']`` for k in means, stds, q05, q95: spots × cell types, columns
      ``{k}cell_abundance_w_sf_{celltype}``;
    - ``obs['detection_sensitivity']`` (posterior mean of y_s) and ``obs['total_cell_abundance']`` (Σ_f E[w_sf]);
    - ``uns['mod']``: ``factor_names`` (cell types), ``var_names``, ``obs_names``, ``post_sample_{k}`` (every site's
      summary restricted to the sample; ``post_sample_means`` also holds ``u_sf``, the expected mRNA molecules of each
      type per spot) and the settings of the fit;
    - with ``expected_expression``, one sparse layer per cell type: the counts split among types (spec §3).

    Returns
    -------
    Sample name -> AnnData.
    """
    summaries = summaries if summaries is not None else mapping_summaries(setup, fit)
    results = {}
    for sample in setup.samples:
        adata = sample.adata[:, setup.genes].copy()
        sites = {k: _sample_sites(setup, summaries[k], sample.name) for k in SUMMARIES}
        for k in SUMMARIES:
            columns = [f"{k}cell_abundance_w_sf_{cell_type}" for cell_type in setup.cell_types]
            adata.obsm[f"{k}_cell_abundance_w_sf"] = pd.DataFrame(sites[k]["w_sf"], adata.obs_names, columns)
        means = sites["means"]
        scaled = _scaled_signatures(setup, summaries["means"])
        means["u_sf"] = means["w_sf"] * scaled.sum(axis=1)
        adata.obs["detection_sensitivity"] = means["y_s"][:, 0]
        adata.obs["total_cell_abundance"] = means["w_sf"].sum(axis=1)
        adata.obs["n_cells_prior"] = sample.spot_cells_prior()  # N̂ of every spot: the prior mean of its cells
        adata.uns["mod"] = {
            "factor_names": list(setup.cell_types),
            "var_names": list(setup.genes),
            "obs_names": list(adata.obs_names),
            **{f"post_sample_{k}": sites[k] for k in SUMMARIES},
            **_settings(setup, fit, sample),
        }
        if expected_expression:
            layers = expected_expression_layers(adata.X, means["w_sf"], scaled, means["s_eg"][0], setup.cell_types)
            for cell_type, layer in layers.items():
                adata.layers[cell_type] = layer
        results[sample.name] = adata
    return results


