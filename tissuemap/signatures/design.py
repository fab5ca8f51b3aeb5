"""The regression's design: which ``obs`` columns code cell types, batches and covariates, coded once from the
reference (:func:`reference_design`) or rebuilt from the settings a fit stored (:func:`stored_design`); the groups of
cells that share a mean, and the per-type average counts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from tissuemap.errors import InputError

# Name of the single batch when the reference has no batch column.
ONE_BATCH = "all"


@dataclass(frozen=True)
class ReferenceDesign:
    """Which ``obs`` columns feed the regression and how their values are coded: set up once, read everywhere.

    Attributes
    ----------
    labels_key, batch_key, covariate_keys
        The ``obs`` columns (``batch_key`` ``None``: one batch).
    cell_types, batches
        Names, in code order.
    covariate_levels
        ``"{column}={level}"`` for every level of every covariate, stacked in ``covariate_keys`` order.
    type_ids, batch_ids
        Per cell, its code (int64).
    level_ids
        Cells × covariates: each cell's level of each covariate as an index into ``covariate_levels``.
    """

    labels_key: str
    batch_key: str | None
    covariate_keys: tuple[str, ...]
    cell_types: tuple[str, ...]
    batches: tuple[str, ...]
    covariate_levels: tuple[str, ...]
    type_ids: np.ndarray
    batch_ids: np.ndarray
    level_ids: np.ndarray


def _codes(adata, column: str, option: str) -> tuple[np.ndarray, tuple[str, ...]]:
    if column not in adata.obs.columns:
        available = ", ".join(map(repr, adata.obs.columns)) or "none"
        raise InputError(f"reference: obs has no column {column!r} (given as {option}); available columns: {available}")
    values = pd.Categorical(adata.obs[column].astype(str))
    return values.codes.astype(np.int64), tuple(map(str, values.categories))


def reference_design(adata, labels_key: str, batch_key: str | None = None,
                     covariate_keys: Sequence[str] = ()) -> ReferenceDesign:
    """Code the reference's cell types, batches and covariates (categories in sorted order)."""
    type_ids, cell_types = _codes(adata, labels_key, "--labels-key")
    if batch_key is None:
        batch_ids, batches = np.zeros(adata.n_obs, dtype=np.int64), (ONE_BATCH,)
    else:
        batch_ids, batches = _codes(adata, batch_key, "--batch-key")
    level_columns, covariate_levels = [], []
    for key in covariate_keys:
        codes, levels = _codes(adata, key, "--covariate-keys")
        level_columns.append(codes + len(covariate_levels))
        covariate_levels.extend(f"{key}={level}" for level in levels)
    level_ids = np.stack(level_columns, axis=1) if level_columns else np.zeros((adata.n_obs, 0), dtype=np.int64)
    return ReferenceDesign(labels_key, batch_key, tuple(covariate_keys), cell_types, batches, tuple(covariate_levels),
                           type_ids, batch_ids, level_ids)


def cell_groups(design: ReferenceDesign) -> tuple[np.ndarray, np.ndarray]:
    """Cells that share a mean under the regression: same type, batch and covariate levels.

    Returns
    -------
    group_ids
        Per cell, its group (int64).
    groups
        Groups × (1 + 1 + covariates): type, batch and covariate level codes of each group.
    """
    keys = np.column_stack([design.type_ids, design.batch_ids, design.level_ids])
    groups, group_ids = np.unique(keys, axis=0, return_inverse=True)
    return group_ids.ravel().astype(np.int64), groups


def type_average_counts(counts, type_ids: np.ndarray, n_types: int) -> np.ndarray:
    """Types × genes: the mean count of each gene over each type's cells (float64)."""
    n_cells = counts.shape[0]
    membership = sp.csr_matrix((np.ones(n_cells), (type_ids, np.arange(n_cells))), shape=(n_types, n_cells))
    totals = membership @ counts
    totals = totals.toarray() if sp.issparse(totals) else np.asarray(totals)
    return totals / np.bincount(type_ids, minlength=n_types)[:, None]


def stored_design(adata) -> ReferenceDesign:
    """The design a fit used, rebuilt from the settings it stored in ``adata.uns['mod']['settings']``."""
    settings = adata.uns["mod"]["settings"]
    return reference_design(adata, settings["labels_key"], settings.get("batch_key"),
                            list(settings.get("covariate_keys", [])))
