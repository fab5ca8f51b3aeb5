"""Reading an annotated single-cell reference (h5ad) and checking it is fit for cell2location.

Both the gene filter and the signature regression start here, so every check a user can fail on a reference is
made once, with a message that names the file and the column. :func:`check_reference` makes the same checks on the
file's obs, var and first cells only, so that `tissuemap run` can make them in a moment before its first step.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from tissuemap.counts import check_raw_counts
from tissuemap.defaults import SIGNATURES_MIN_CELLS_PER_TYPE
from tissuemap.errors import InputError
from tissuemap.log import logger

# The counts source that ``--layer raw`` names: AnnData's ``.raw`` (its X, with its own var_names).
RAW = "raw"
# Cells whose counts the quick check reads: enough to catch normalised or log-transformed values.
CHECKED_CELLS = 1000


def _raw_counts_remedy(layers) -> str:
    """What to do about a reference without raw counts in the matrix read, naming ``--layer`` and the layers."""
    named = ", ".join(repr(name) for name in layers)
    return (f"give the layer that holds them with --layer NAME{f' (layers: {named})' if named else ''}, "
            f"or --layer {RAW} for .raw")


def _check_column(obs, path, column: str, option: str) -> None:
    """Raise :class:`InputError` unless ``obs[column]`` exists and has no missing values."""
    if column not in obs.columns:
        available = ", ".join(map(repr, obs.columns)) or "none"
        raise InputError(f"{path}: obs has no column {column!r} (given as {option}); available columns: {available}")
    values = obs[column]
    missing = (values.isna() | (values.astype(str).str.strip() == "")).to_numpy()
    if missing.any():
        raise InputError(
            f"{path}: obs column {column!r} is empty for {int(missing.sum())} cells (first: "
            f"{obs.index[missing][0]!r}); fill it for every cell or remove those cells"
        )


def _check_annotation(path, obs, var_names, labels_key: str, batch_key: str | None, covariate_keys: Sequence[str],
                      min_cells_per_type: int | None):
    """The checks on the reference's obs and var_names; returns the number of cells of each type."""
    duplicated = var_names[var_names.duplicated()]
    if len(duplicated):
        raise InputError(
            f"{path}: {len(duplicated)} gene names repeat in var_names (first: {duplicated[0]!r}); "
            "make them unique (e.g. anndata's var_names_make_unique) or name genes by Ensembl id"
        )
    for column, option in _columns(labels_key, batch_key, covariate_keys):
        _check_column(obs, path, column, option)
    cells_per_type = obs[labels_key].astype(str).value_counts()
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
    return cells_per_type


def _columns(labels_key: str, batch_key: str | None, covariate_keys: Sequence[str]) -> list[tuple[str, str]]:
    """The obs columns the reference needs, each with the option that names it."""
    return [(labels_key, "--labels-key"), *(((batch_key, "--batch-key"),) if batch_key is not None else ()),
            *((key, "--covariate-keys") for key in covariate_keys)]


def _missing_layer(path, layer: str, layers) -> InputError:
    available = ", ".join(map(repr, layers)) or "none"
    if layer == RAW:
        return InputError(f"{path}: has no .raw and no layer {RAW!r} (given as --layer); available layers: {available}")
    return InputError(f"{path}: has no layer {layer!r} (given as --layer); available layers: {available}; "
                      f"--layer {RAW} reads .raw")


def read_reference(
    path: str | os.PathLike,
    labels_key: str,
    batch_key: str | None = None,
    covariate_keys: Sequence[str] = (),
    layer: str | None = None,
    min_cells_per_type: int | None = SIGNATURES_MIN_CELLS_PER_TYPE,
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
        Layer holding the raw counts; ``"raw"`` reads ``.raw`` (its X and var_names, when the file has a ``.raw``);
        ``None`` reads them from ``X``.
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

    layers = list(adata.layers)
    if layer == RAW and adata.raw is not None:
        adata = adata.raw.to_adata()
    elif layer is not None:
        if layer not in adata.layers:
            raise _missing_layer(path, layer, adata.layers)
        adata.X = adata.layers[layer]
        del adata.layers[layer]
    if adata.X is None:
        raise InputError(f"{path}: has no X matrix; give the layer holding raw counts with --layer")
    check_raw_counts(adata.X, str(path), adata.obs_names, adata.var_names, what=_counts_name(layer),
                     remedy=_raw_counts_remedy(layers))
    cells_per_type = _check_annotation(path, adata.obs, adata.var_names, labels_key, batch_key, covariate_keys,
                                       min_cells_per_type)
    for column, _ in _columns(labels_key, batch_key, covariate_keys):
        adata.obs[column] = adata.obs[column].astype(str).astype("category")
    logger.info(
        "Reference %s: %d cells x %d genes, %d cell types (obs column %r)%s",
        path, adata.n_obs, adata.n_vars, len(cells_per_type), labels_key,
        "" if layer is None else f"; counts from {_counts_name(layer)}",
    )
    return adata


def _counts_name(layer: str | None) -> str:
    return "X" if layer is None else ".raw" if layer == RAW else f"layer {layer!r}"


def check_reference(
    path: str | os.PathLike,
    labels_key: str,
    batch_key: str | None = None,
    covariate_keys: Sequence[str] = (),
    layer: str | None = None,
    min_cells_per_type: int | None = SIGNATURES_MIN_CELLS_PER_TYPE,
) -> None:
    """The checks of :func:`read_reference`, made on the file's obs, var and first :data:`CHECKED_CELLS` cells only
    (h5py, without loading the matrix): fast enough to run before a pipeline's first step. Raises the same
    :class:`InputError` messages; the full matrix is checked when the step reads it."""
    import h5py
    from anndata.io import read_elem, sparse_dataset

    try:
        handle = h5py.File(path, "r")
    except OSError as err:
        raise InputError(f"{path}: cannot be read as an h5ad file ({err}); give an AnnData .h5ad reference") from None
    with handle:
        if "obs" not in handle or "var" not in handle:
            raise InputError(f"{path}: has no obs or var; give an AnnData .h5ad reference")
        obs = read_elem(handle["obs"])
        layers = list(handle["layers"]) if "layers" in handle else []
        if layer == RAW and "raw" in handle:
            var_names, matrix = read_elem(handle["raw/var"]).index, handle["raw/X"]
        else:
            var_names = read_elem(handle["var"]).index
            if layer is not None and layer not in layers:
                raise _missing_layer(path, layer, layers)
            key = "X" if layer is None else f"layers/{layer}"
            if key not in handle:
                raise InputError(f"{path}: has no X matrix; give the layer holding raw counts with --layer")
            matrix = handle[key]
        rows = min(CHECKED_CELLS, len(obs))
        first = sparse_dataset(matrix)[:rows] if isinstance(matrix, h5py.Group) else matrix[:rows]
        check_raw_counts(first, str(path), obs.index, var_names, what=_counts_name(layer),
                         remedy=_raw_counts_remedy(layers))
    _check_annotation(path, obs, var_names, labels_key, batch_key, covariate_keys, min_cells_per_type)
