"""Gene selection: cell2location's gene filter for the reference, and matching genes between reference and spatial data.

The filter (spec §1) keeps a gene when it is detected in more than a fraction of all cells, or when it is detected in
more than a few cells with a high mean count where detected: rare cell types' markers survive, noise does not.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from tissuemap.defaults import CELL_COUNT_CUTOFF, CELL_PERCENTAGE_CUTOFF2, NONZ_MEAN_CUTOFF
from tissuemap.errors import InputError
from tissuemap.log import logger

# Human ENSG..., mouse ENSMUSG..., and other species' ENS<species>G... ids, with an optional version suffix (.12).
ENSEMBL_ID = re.compile(r"^(ENS[A-Z]*G\d+)(\.\d+)?$")
ID_COLUMNS = ("gene_ids", "gene_id", "feature_id", "ENSEMBL")
SYMBOL_COLUMNS = ("SYMBOL", "feature_name", "gene_symbols", "gene_name")
BY_ID = "Ensembl id"
BY_SYMBOL = "symbol"


def gene_filter_table(
    adata,
    cell_count_cutoff: float = CELL_COUNT_CUTOFF,
    cell_percentage_cutoff2: float = CELL_PERCENTAGE_CUTOFF2,
    nonz_mean_cutoff: float = NONZ_MEAN_CUTOFF,
) -> pd.DataFrame:
    """Apply cell2location's gene filter rule to the raw counts in ``adata.X``.

    A gene g is kept when ``n_cells[g] > n_obs * cell_percentage_cutoff2`` or when both
    ``n_cells[g] > cell_count_cutoff`` and ``nonz_mean[g] > nonz_mean_cutoff`` (all strict); genes detected in no
    cell are never kept.

    Returns
    -------
    One row per gene (index ``var_names``): ``n_cells`` (cells with a count > 0), ``nonz_mean`` (mean count over
    those cells; NaN when undetected) and ``keep``.
    """
    counts = adata.X
    if sp.issparse(counts):
        counts = sp.csr_matrix(counts)
    n_cells = np.asarray((counts > 0).sum(axis=0)).ravel().astype(np.int64)
    # float64 sums: float32 would round large totals and move genes across the nonz_mean edge
    totals = np.asarray(counts.sum(axis=0, dtype=np.float64)).ravel()
    detected = n_cells > 0
    nonz_mean = np.full(n_cells.shape, np.nan)
    nonz_mean[detected] = totals[detected] / n_cells[detected]
    keep = detected & (
        (n_cells > adata.n_obs * cell_percentage_cutoff2)
        | ((n_cells > cell_count_cutoff) & (nonz_mean > nonz_mean_cutoff))
    )
    return pd.DataFrame({"n_cells": n_cells, "nonz_mean": nonz_mean, "keep": keep}, index=adata.var_names.copy())


def filter_genes(
    adata,
    cell_count_cutoff: float = CELL_COUNT_CUTOFF,
    cell_percentage_cutoff2: float = CELL_PERCENTAGE_CUTOFF2,
    nonz_mean_cutoff: float = NONZ_MEAN_CUTOFF,
):
    """Keep the genes that pass cell2location's gene filter (see :func:`gene_filter_table`).

    Returns
    -------
    A copy of ``adata`` with the kept genes (``var`` columns and counts unchanged) and
    ``uns['filter_genes']``: the three cutoffs, ``n_cells_total``, ``n_genes_in``, ``n_genes_kept``,
    ``n_genes_undetected`` and ``genes``, the per-gene table of every input gene (for the diagnostic plot).
    """
    table = gene_filter_table(adata, cell_count_cutoff, cell_percentage_cutoff2, nonz_mean_cutoff)
    filtered = adata[:, table["keep"].to_numpy()].copy()
    filtered.uns["filter_genes"] = {
        "cell_count_cutoff": cell_count_cutoff,
        "cell_percentage_cutoff2": cell_percentage_cutoff2,
        "nonz_mean_cutoff": nonz_mean_cutoff,
        "n_cells_total": int(adata.n_obs),
        "n_genes_in": int(adata.n_vars),
        "n_genes_kept": int(table["keep"].sum()),
        "n_genes_undetected": int((table["n_cells"] == 0).sum()),
        "genes": table,
    }
    logger.info(
        "Gene filter (cell_count_cutoff %g, cell_percentage_cutoff2 %g, nonz_mean_cutoff %g): kept %d of %d genes "
        "(%d detected in no cell)",
        cell_count_cutoff, cell_percentage_cutoff2, nonz_mean_cutoff,
        filtered.n_vars, adata.n_vars, filtered.uns["filter_genes"]["n_genes_undetected"],
    )
    return filtered


@dataclass(frozen=True)
class GeneMatch:
    """Genes shared by a reference and spatial data, aligned: ``reference_names[i]`` is ``spatial_names[i]``."""

    reference_names: list[str]
    spatial_names: list[str]
    key: str  # BY_ID or BY_SYMBOL

    @property
    def n_shared(self) -> int:
        return len(self.reference_names)


def _looks_like_ids(values: pd.Index) -> bool:
    """Whether most values are Ensembl ids (a few spike-ins or custom features may sit among them)."""
    return len(values) > 0 and values.astype(str).str.match(ENSEMBL_ID).mean() > 0.5


def _ensembl_keys(var: pd.DataFrame) -> pd.Series | None:
    """Versionless Ensembl id of each gene (index ``var_names``; NaN where not an id), or None without ids."""
    if _looks_like_ids(var.index):
        ids = pd.Series(var.index.astype(str), index=var.index)
    else:
        column = next((c for c in ID_COLUMNS if c in var.columns and _looks_like_ids(pd.Index(var[c]))), None)
        if column is None:
            return None
        ids = var[column].astype(str)
    return ids.str.extract(ENSEMBL_ID)[0]


def _symbol_keys(var: pd.DataFrame) -> pd.Series | None:
    """Gene symbol of each gene (index ``var_names``), or None when ``var`` holds no symbols."""
    if not _looks_like_ids(var.index):
        return pd.Series(var.index.astype(str), index=var.index, dtype="string")
    column = next((c for c in SYMBOL_COLUMNS if c in var.columns), None)
    if column is None:
        return None
    return var[column].astype("string")


def _unambiguous(keys: pd.Series, name: str, key: str) -> pd.Series:
    """Drop missing keys and keys shared by several genes: such a gene cannot be paired with one partner."""
    keys = keys.dropna()
    keys = keys[keys.str.len() > 0]
    ambiguous = keys.duplicated(keep=False)
    if ambiguous.any():
        logger.info("%s: %d genes share their %s with another gene and are left out of matching (e.g. %r)",
                    name, int(ambiguous.sum()), key, keys[ambiguous].iloc[0])
    return keys[~ambiguous]


def match_genes(
    reference_var: pd.DataFrame,
    spatial_var: pd.DataFrame,
    min_shared: int = 1000,
    reference_name: str = "reference",
    spatial_name: str = "spatial data",
) -> GeneMatch:
    """Pair the genes of a reference (or a signatures table) with those of spatial data.

    Genes are matched by versionless Ensembl id when both sides have ids (as ``var_names`` or in one of the columns
    ``gene_ids``, ``gene_id``, ``feature_id``, ``ENSEMBL``), otherwise by symbol (``var_names`` that are not ids, or
    one of the columns ``SYMBOL``, ``feature_name``, ``gene_symbols``, ``gene_name``). A name carried by several
    genes on one side is ambiguous and left out.

    Parameters
    ----------
    reference_var, spatial_var
        ``AnnData.var``-like frames: index = ``var_names``.
    min_shared
        Fewest shared genes accepted.
    reference_name, spatial_name
        How messages name the two inputs (their files).

    Returns
    -------
    The shared genes in the reference's order, by ``var_names`` on each side.

    Raises
    ------
    InputError
        If the two sides have no gene naming in common, or share fewer than ``min_shared`` genes.
    """
    reference_keys, spatial_keys = _ensembl_keys(reference_var), _ensembl_keys(spatial_var)
    key = BY_ID
    if reference_keys is None or spatial_keys is None:
        reference_keys, spatial_keys = _symbol_keys(reference_var), _symbol_keys(spatial_var)
        key = BY_SYMBOL
    if reference_keys is None or spatial_keys is None:
        ids_only, without_ids = (
            (reference_name, spatial_name) if reference_keys is None else (spatial_name, reference_name)
        )
        raise InputError(
            f"{ids_only} names genes by Ensembl id only and {without_ids} has no Ensembl ids, so their genes cannot be "
            f"matched; add a symbol column ({', '.join(SYMBOL_COLUMNS)}) to the first or an id column "
            f"({', '.join(ID_COLUMNS)}) to the second"
        )

    reference_keys = _unambiguous(reference_keys, reference_name, key)
    spatial_keys = _unambiguous(spatial_keys, spatial_name, key)
    spatial_by_key = pd.Series(spatial_keys.index, index=spatial_keys.to_numpy())
    shared = reference_keys[reference_keys.isin(spatial_by_key.index)]
    match = GeneMatch(
        reference_names=[str(name) for name in shared.index],
        spatial_names=[str(name) for name in spatial_by_key.loc[shared.to_numpy()]],
        key=key,
    )
    logger.info(
        "Genes matched by %s: %d shared between %s (%d genes) and %s (%d genes)",
        key, match.n_shared, reference_name, len(reference_var), spatial_name, len(spatial_var),
    )
    if match.n_shared < min_shared:
        raise InputError(
            f"{reference_name} and {spatial_name} share only {match.n_shared} genes by {key} (at least {min_shared} "
            "needed); check that both are from the same species and name genes the same way, "
            "or lower --min-shared-genes"
        )
    return match
