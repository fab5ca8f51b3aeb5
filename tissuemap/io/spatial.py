"""Read one spatial sample, from a Space Ranger ``outs/`` folder or an AnnData ``.h5ad``, into one AnnData layout.

The layout is the one :mod:`tissuemap.io.visium` documents; an ``.h5ad`` needs raw counts in ``X`` and spot
coordinates in ``obsm['spatial']``, and keeps its ``uns['spatial']`` images and scale factors when it has them.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from tissuemap.counts import check_raw_counts
from tissuemap.errors import InputError
from tissuemap.io.positions import find_positions
from tissuemap.io.visium import MATRIX_FILES, find_matrix, read_images, read_spaceranger
from tissuemap.io.visium_hd import BINNED_FOLDER, DEFAULT_BIN_SIZE, hd_bin_folder, is_visium_hd
from tissuemap.locations import BIN_SIZE_KEY, sample_locations
from tissuemap.log import logger

# var columns that other tools use for gene symbols and for Ensembl ids (CELLxGENE, scanpy, Seurat conversions)
SYMBOL_COLUMNS = ("SYMBOL", "feature_name", "gene_symbols", "gene_symbol", "gene_name", "gene_names", "symbol")
GENE_ID_COLUMNS = ("gene_ids", "gene_id", "ensembl_id", "feature_id")


def read_spatial_sample(path: str | Path, sample: str, bin_size: int | None = None):
    """Read one sample: a Space Ranger ``outs/`` folder (or the run folder above it) or an ``.h5ad`` file.

    Parameters
    ----------
    path
        Space Ranger ``outs/`` folder (standard Visium or Visium HD), or ``.h5ad`` with raw counts in ``X`` and
        ``obsm['spatial']``.
    sample
        Sample name: ``obs['sample']`` and the library id of ``uns['spatial']``.
    bin_size
        Visium HD only: the bins to read, 2, 8 or 16 um (default 8; see :mod:`tissuemap.io.visium_hd`). Ignored,
        with a log line, for other inputs.

    Returns
    -------
    AnnData with the in-tissue spots, raw counts in ``X`` (float32 CSR), Ensembl ids as ``var_names`` where known
    and symbols in ``var['SYMBOL']``.
    """
    path = _locate(Path(path))
    if path.is_dir() and is_visium_hd(path):
        return read_visium_hd(path, sample, bin_size)
    if not path.is_dir():
        layout = ".h5ad"
    elif path.parent.name == BINNED_FOLDER:
        layout = "Visium HD bin folder (read as given)"
    else:
        layout = "standard Visium (Space Ranger outs/)"
    logger.info("%s: %s layout", path, layout)
    if bin_size is not None:
        logger.warning("%s: bin_size %s ignored: this is a %s input, not a Visium HD outs/ folder with binned_outputs/",
                       path, bin_size, layout)
    if path.is_dir():
        return read_spaceranger(path, sample)
    return read_h5ad_sample(path, sample)


def read_visium_hd(outs_dir: Path, sample: str, bin_size: int | None):
    """Read the ``bin_size`` bins of a Visium HD ``outs/`` folder; the tissue images come from the bin folder's
    ``spatial/``, else from ``outs/spatial/``, and ``bin_size_um`` is in the scale factors whatever Space Ranger
    wrote (the plots draw each bin as a square of that size)."""
    folder = hd_bin_folder(outs_dir, bin_size)
    bin_size_um = DEFAULT_BIN_SIZE if bin_size is None else bin_size
    logger.info("%s: Visium HD layout; reading the %d um bins of %s/%s%s", outs_dir, bin_size_um, BINNED_FOLDER,
                folder.name, "" if bin_size is not None else " (the default bin size)")
    adata = read_spaceranger(folder, sample)
    library = adata.uns["spatial"][sample]
    if not library["images"]:
        library["images"] = read_images(outs_dir)
    scalefactors = library["scalefactors"]
    if scalefactors.get(BIN_SIZE_KEY) not in (None, bin_size_um):
        logger.warning("%s: scalefactors_json.json says %s %s; its folder's name says %d, which is used",
                       folder, BIN_SIZE_KEY, scalefactors[BIN_SIZE_KEY], bin_size_um)
    scalefactors[BIN_SIZE_KEY] = bin_size_um
    return adata


def _locate(path: Path) -> Path:
    """The Space Ranger ``outs/`` folder (``path`` or its ``outs/``) or the ``.h5ad`` file to read."""
    if not path.exists():
        raise InputError(f"{path}: not found; give a Space Ranger outs/ folder or an .h5ad file")
    if path.is_dir():
        has_matrix = any((path / name).is_file() for name in MATRIX_FILES)
        if not has_matrix and (path / "outs").is_dir():
            logger.info("%s: reading its outs/ folder", path)
            return path / "outs"
        return path
    if path.suffix == ".h5ad":
        return path
    raise InputError(
        f"{path}: not a folder or an .h5ad file; give the Space Ranger outs/ folder (matrix h5 and spatial/) "
        "or an .h5ad with raw counts and obsm['spatial']"
    )


def check_spatial_input(path: str | Path, bin_size: int | None = None) -> None:
    """Raise :class:`InputError` unless ``path`` looks readable by :func:`read_spatial_sample`, without reading the
    counts: a Space Ranger folder with its matrix and positions files, or an ``.h5ad`` with ``X`` and
    ``obsm['spatial']``. For the checks `tissuemap run` makes before its first step."""
    import h5py

    path = _locate(Path(path))
    if path.is_dir():
        if is_visium_hd(path):
            path = hd_bin_folder(path, bin_size)
        for found in (find_matrix(path), find_positions(path)):
            if not os.access(found, os.R_OK):
                raise InputError(f"{found}: not readable (permissions); make it readable for this user")
        return
    try:
        with h5py.File(path, "r") as handle:
            missing = [name for key, name in (("X", "X"), ("obsm/spatial", "obsm['spatial']")) if key not in handle]
    except OSError as err:
        raise InputError(f"{path}: not a readable .h5ad file ({err}); write it with anndata's write_h5ad") from None
    if missing:
        raise InputError(f"{path}: has no {' or '.join(missing)}; give raw counts in X and the spots' [x, y] positions "
                         "in obsm['spatial'], or the Space Ranger outs/ folder instead")


def read_h5ad_sample(path: Path, sample: str):
    """Read an ``.h5ad`` sample (see :func:`read_spatial_sample`); with ``obs['in_tissue']``, only in-tissue spots."""
    import anndata as ad
    import scipy.sparse as sp

    try:
        adata = ad.read_h5ad(path)
    except (OSError, KeyError, ValueError) as err:
        raise InputError(f"{path}: not a readable .h5ad file ({err}); write it with anndata's write_h5ad") from None
    spatial = adata.obsm.get("spatial")
    if spatial is None:
        raise InputError(
            f"{path}: no obsm['spatial'] (spot coordinates); store the spots' [x, y] pixel positions there, "
            "or give the Space Ranger outs/ folder instead"
        )
    spatial = np.asarray(spatial)
    if spatial.ndim != 2 or spatial.shape[1] != 2 or not np.issubdtype(spatial.dtype, np.number):
        raise InputError(
            f"{path}: obsm['spatial'] must be a numeric spots x 2 array of [x, y] positions, got {spatial.shape}"
        )
    check_raw_counts(adata.X, str(path), adata.obs_names, adata.var_names)
    if "in_tissue" in adata.obs:
        in_tissue = adata.obs["in_tissue"].to_numpy() == 1
        logger.info("%s: keeping the %d of %d spots with in_tissue = 1", path, int(in_tissue.sum()), adata.n_obs)
        if not in_tissue.any():
            raise InputError(f"{path}: no spot has obs['in_tissue'] = 1; check the file")
        adata = adata[in_tissue].copy()
    adata.X = sp.csr_matrix(adata.X, dtype=np.float32)
    adata.obsm["spatial"] = np.asarray(adata.obsm["spatial"], dtype=np.float64)
    adata.obs["sample"] = sample
    _name_genes(adata, path)
    _rekey_spatial(adata, sample, path)
    logger.info("%s: %d %s x %d genes", sample, adata.n_obs, sample_locations(adata, sample).many, adata.n_vars)
    return adata


def _name_genes(adata, path: Path) -> None:
    """Put symbols in ``var['SYMBOL']`` and, when a column holds them, Ensembl ids in ``var_names``."""
    symbol_column = next((column for column in SYMBOL_COLUMNS if column in adata.var), None)
    id_column = next((column for column in GENE_ID_COLUMNS if column in adata.var), None)
    if symbol_column is None and id_column is None:
        if np.array_equal(adata.var_names.to_numpy(dtype=str), np.arange(adata.n_vars).astype(str)):
            raise InputError(
                f"{path}: var_names are 0..{adata.n_vars - 1}, not gene names, and var has no gene symbol or id "
                f"column ({', '.join(SYMBOL_COLUMNS + GENE_ID_COLUMNS)}); store gene symbols or Ensembl ids in one"
            )
        logger.warning("%s: no gene symbol or gene id column in var; var_names serve as both", path)
    # without a symbol column, var_names are the symbols (as scanpy's read_10x_h5 writes them)
    symbols = adata.var[symbol_column] if symbol_column is not None else adata.var_names
    adata.var["SYMBOL"] = np.asarray(symbols).astype(str)
    if id_column is not None:
        adata.var_names = adata.var.pop(id_column).astype(str).to_numpy()
    if not adata.var_names.is_unique:
        logger.warning("%s: some var_names repeat; suffixes -1, -2... make them unique", path)
        adata.var_names_make_unique()


def _rekey_spatial(adata, sample: str, path: Path) -> None:
    """File the one library of ``uns['spatial']`` under the sample name, so plots find its image."""
    libraries = adata.uns.get("spatial")
    if not libraries:
        logger.info("%s: no uns['spatial'] (tissue image, scale factors); spots will be drawn without an image", path)
        return
    if sample in libraries:
        adata.uns["spatial"] = {sample: libraries[sample]}
    elif len(libraries) == 1:
        adata.uns["spatial"] = {sample: next(iter(libraries.values()))}
    else:
        logger.warning(
            "%s: uns['spatial'] holds %d libraries (%s), none named %r; the tissue image is not used",
            path, len(libraries), ", ".join(libraries), sample,
        )
        del adata.uns["spatial"]
