"""Reading an annotated single-cell reference (h5ad) and checking it is fit for cell2location.

Both the gene filter and the signature regression start here, so every check a user can fail on a reference is
made once, with a message that names the file and the column.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from tissuemap.counts import check_raw_counts
from tissuemap.errors import InputError
from tissuemap.log import logger


def _check_column(adata, path, column: str, option: str) -> None:
    """Raise :class:`InputError` unless ``obs[column]`` exists and has no missing values."""
    if column not in adata.obs.columns:
        available = ", ".join(map(repr, adata.obs.columns)) or "none"
        raise InputError(f"{path}: obs has no column {column!r} (given as {option}); available columns: {available}")
    values = adata.obs[column]
    missing = (values.isna() | (values.astype(str).str.strip() == "")).to_numpy()
    if missing.any():
        raise InputError(
            f"{path}: obs column {column!r} is empty for {int(missing.sum())} cells (first: "
            f"{adata.obs_names[missing][0]!r}); fill it for every cell or remove those cells"
        )


def read_reference(
    path: str | os.PathLike,
    labels_key: str,
    batch_key: str | None = None,
    covariate_keys: Sequence[str] = (),
    layer: str | None = None,
    min_cells_per_type: int | None = 10,
):
    """Read an annotated single-cell reference and check it holds what cell2location needs.

    Parameters
    ----------
    path
        The ``.h5ad`` file: cells × genes.
    labels_key
        ``obs`` column with each cell's type.
    batch_key
        ``obs`` column with each cell's batch (10x reaction or sample); ``None`` for one batch.
    covariate_keys
        Further categorical ``obs`` columns (technology, donor...).
    layer
        Layer holding the raw counts; ``None`` reads them from ``X``.
    min_cells_per_type
        Smallest number of cells a type may have (its signature cannot be learnt from fewer); ``None`` skips the
        check.

    Returns
    -------
    The reference with raw counts in ``X`` (moved there from ``layer`` when one is given; the layer itself is
    dropped so the counts are held once). The label, batch and covariate columns are categorical with string
    categories (numeric cluster ids become names usable as column suffixes).

    Raises
    ------
    InputError
        If the file cannot be read, the layer or a column is missing, a cell has no label, there are fewer than two
        cell types, a type has fewer than ``min_cells_per_type`` cells, gene names repeat, or the counts are not raw
        integers.
    """
    import anndata as ad

    try:
        adata = ad.read_h5ad(path)
    except OSError as err:
        raise InputError(f"{path}: cannot be read as an h5ad file ({err}); give an AnnData .h5ad reference") from None

    if layer is not None:
        if layer not in adata.layers:
            available = ", ".join(map(repr, adata.layers)) or "none"
            raise InputError(f"{path}: has no layer {layer!r} (given as --layer); available layers: {available}")
        adata.X = adata.layers[layer]
        del adata.layers[layer]
    if adata.X is None:
        raise InputError(f"{path}: has no X matrix; give the layer holding raw counts with --layer")
    what = f"layer {layer!r}" if layer is not None else "X"
    check_raw_counts(adata.X, str(path), adata.obs_names, adata.var_names, what=what)

    duplicated = adata.var_names[adata.var_names.duplicated()]
    if len(duplicated):
        raise InputError(
            f"{path}: {len(duplicated)} gene names repeat in var_names (first: {duplicated[0]!r}); "
            "make them unique (e.g. anndata's var_names_make_unique) or name genes by Ensembl id"
        )

    for column, option in (
        (labels_key, "--labels-key"),
        *(((batch_key, "--batch-key"),) if batch_key is not None else ()),
        *((key, "--covariate-keys") for key in covariate_keys),
    ):
        _check_column(adata, path, column, option)
        adata.obs[column] = adata.obs[column].astype(str).astype("category")

    cells_per_type = adata.obs[labels_key].value_counts()
    if len(cells_per_type) < 2:
        raise InputError(
            f"{path}: obs column {labels_key!r} holds {len(cells_per_type)} cell type; "
            "cell2location needs at least 2: check --labels-key"
        )
    if min_cells_per_type is not None:
        too_small = cells_per_type[cells_per_type < min_cells_per_type]
        if len(too_small):
            listed = ", ".join(f"{name!r} ({count})" for name, count in too_small.items())
            raise InputError(
                f"{path}: cell types with fewer than {min_cells_per_type} cells in obs column {labels_key!r}: "
                f"{listed}; merge or remove them, or lower the minimum (--min-cells-per-type)"
            )

    logger.info(
        "Reference %s: %d cells x %d genes, %d cell types (obs column %r)",
        path, adata.n_obs, adata.n_vars, len(cells_per_type), labels_key,
    )
    return adata
