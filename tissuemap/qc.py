"""Spot quality control of one Visium sample, before mapping.

:func:`run_qc` keeps the raw counts untouched and writes:

- ``obsm['MT']``: counts of the mitochondrial genes (symbols starting ``MT-``/``mt-``), removed from ``X`` because
  they reflect cell stress rather than cell type (as in the cell2location tutorial);
- ``obs['mt_frac']``: MT counts over all counts of the spot, before their removal;
- ``obs['total_counts']``, ``obs['n_genes_by_counts']``: UMIs and detected genes per spot, of the genes left in ``X``
  (the counts the mapping sees; ``scanpy.pp.calculate_qc_metrics``);
- ``uns['qc_removed_spots']``: one row per removed spot (barcode index) with its ``reason``, metrics and ``x``/``y``;
- ``uns['tissuemap']``: ``sample``, ``slide`` and the mapping hyper-parameters given for this sample
  (``n_cells_per_location``, ``detection_alpha``), plus ``qc`` = the thresholds used. The mapping step reads them.
"""

from __future__ import annotations

from tissuemap.errors import InputError
from tissuemap.locations import bin_size_of, locations_of
from tissuemap.log import logger

# numpy, pandas and scanpy are imported inside the functions: the command line imports this module for its defaults.

# Spots with no count carry no information and leave the per-spot detection rate undefined. Any higher fixed cut
# depends on the gene panel: ordinary in-tissue spots hold ~50 UMIs on a 100-gene panel, ~14,000 genome-wide.
DEFAULT_MIN_COUNTS = 1
MT_PREFIX = "mt-"
BELOW_MIN_COUNTS = "below_min_counts"
QUANTILES = {"q05": 0.05, "q25": 0.25, "median": 0.5, "q75": 0.75, "q95": 0.95}


def mitochondrial_genes(adata):
    """Boolean mask of the genes whose symbol (``var['SYMBOL']``, else ``var_names``) starts with ``MT-``/``mt-``."""
    symbols = adata.var["SYMBOL"] if "SYMBOL" in adata.var else adata.var_names.to_series()
    return symbols.astype(str).str.lower().str.startswith(MT_PREFIX).to_numpy()


def _spot_metrics(adata):
    import scanpy as sc

    obs_metrics, _ = sc.pp.calculate_qc_metrics(adata, percent_top=None, log1p=False, inplace=False)
    return obs_metrics[["total_counts", "n_genes_by_counts"]]


def _quantiles(values) -> dict[str, float]:
    import numpy as np

    return {name: float(np.quantile(np.asarray(values, dtype=np.float64), q)) for name, q in QUANTILES.items()}


def run_qc(
    adata,
    sample: str,
    min_counts: int = DEFAULT_MIN_COUNTS,
    *,
    n_cells_per_location: float | None = None,
    detection_alpha: float | None = None,
    slide: str | None = None,
):
    """Move mitochondrial genes out of the matrix, compute spot metrics and remove spots under ``min_counts``.

    Parameters
    ----------
    adata
        One sample as read by :func:`tissuemap.io.read_spatial_sample` (raw counts in ``X``); left unchanged.
    sample
        Sample name, recorded in ``uns['tissuemap']``.
    min_counts
        Remove spots with fewer UMIs than this, counted over the non-mitochondrial genes.
    n_cells_per_location, detection_alpha
        Mapping hyper-parameters for this sample; stored only when given (the mapping step has defaults).
    slide
        Slide (batch) label for joint mapping; defaults to ``sample``.

    Returns
    -------
    The filtered copy of ``adata`` (keys written: see the module docstring) and a JSON-ready summary.

    Raises
    ------
    InputError
        When no spot is left.
    """
    import anndata as ad
    import numpy as np
    import pandas as pd

    bin_size_um = bin_size_of(adata, sample)
    locations = locations_of(bin_size_um)
    is_mt = mitochondrial_genes(adata)
    mt_counts = adata[:, is_mt].X
    all_counts = np.asarray(adata.X.sum(axis=1), dtype=np.float64).ravel()
    mt_total = np.asarray(mt_counts.sum(axis=1), dtype=np.float64).ravel()
    mt_symbols = adata.var["SYMBOL"][is_mt] if "SYMBOL" in adata.var else adata.var_names[is_mt].to_series()

    qc = adata[:, ~is_mt].copy()
    qc.obsm["MT"] = pd.DataFrame(
        mt_counts.toarray() if hasattr(mt_counts, "toarray") else np.asarray(mt_counts),
        index=qc.obs_names,
        columns=ad.utils.make_index_unique(pd.Index(mt_symbols.astype(str))),
    )
    # a spot without any count has no MT fraction: 0 keeps the column numeric (--min-counts 1 removes such spots)
    qc.obs["mt_frac"] = np.divide(mt_total, all_counts, out=np.zeros_like(all_counts), where=all_counts > 0)
    qc.obs[["total_counts", "n_genes_by_counts"]] = _spot_metrics(qc)
    logger.info(
        "%s: moved %d mitochondrial genes (%.1f%% of UMIs) from X to obsm['MT']; %d genes left",
        sample, int(is_mt.sum()), 100 * mt_total.sum() / max(all_counts.sum(), 1), qc.n_vars,
    )

    below = qc.obs["total_counts"].to_numpy() < min_counts
    removed = qc.obs.loc[below, ["total_counts", "n_genes_by_counts", "mt_frac"]].copy()
    removed.insert(0, "reason", pd.Categorical([BELOW_MIN_COUNTS] * int(below.sum()), categories=[BELOW_MIN_COUNTS]))
    removed[["x", "y"]] = qc.obsm["spatial"][below]
    logger.info(
        "%s: removed %d of %d %s with fewer than %d UMIs (--min-counts)",
        sample, int(below.sum()), qc.n_obs, locations.many, min_counts,
    )
    if below.all():
        raise InputError(
            f"{sample}: all {qc.n_obs} in-tissue {locations.many} have fewer than {min_counts} UMIs outside mitochondrial genes "
            f"(most: {int(qc.obs['total_counts'].max())}); lower --min-counts"
        )
    qc = qc[~below].copy()

    mapping = {"sample": sample, "slide": slide or sample}
    if n_cells_per_location is not None:
        mapping["n_cells_per_location"] = float(n_cells_per_location)
    if detection_alpha is not None:
        mapping["detection_alpha"] = float(detection_alpha)
    qc.uns["tissuemap"] = {**mapping, "qc": {"min_counts": int(min_counts)}}
    qc.uns["qc_removed_spots"] = removed
    logger.info("%s: mapping parameters stored in uns['tissuemap']: %s", sample, mapping)

    metadata = adata.uns.get("spatial", {}).get(sample, {}).get("metadata", {})
    summary = {
        "sample": sample,
        "software_version": metadata.get("software_version"),
        # Visium HD: the side of the bins read (um); null for Visium spots. The reports call them by it.
        "bin_size_um": bin_size_um,
        "spots_in_tissue": int(adata.n_obs),
        "spots_kept": int(qc.n_obs),
        "spots_removed": {
            "total": int(below.sum()),
            "by_reason": {BELOW_MIN_COUNTS: int(below.sum())},
            "spots": [
                {"barcode": barcode, "reason": row.reason, "total_counts": int(row.total_counts)}
                for barcode, row in removed.iterrows()
            ],
        },
        "genes_in_matrix": int(qc.n_vars),
        "mt_genes_removed": mt_symbols.astype(str).tolist(),
        "umis_per_spot": _quantiles(qc.obs["total_counts"]),
        "genes_per_spot": _quantiles(qc.obs["n_genes_by_counts"]),
        "mt_fraction": {"median": float(qc.obs["mt_frac"].median()), "mean": float(qc.obs["mt_frac"].mean())},
        "thresholds": {"min_counts": int(min_counts)},
        "mapping_parameters": mapping,
    }
    return qc, summary
