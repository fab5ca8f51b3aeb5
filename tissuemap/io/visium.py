"""Read one 10x Visium sample from a Space Ranger ``outs/`` folder (Space Ranger 1.x to 3.x) into AnnData.

The layout follows the scanpy/squidpy convention that cell2location users expect:

- ``X``: raw UMI counts, float32 CSR; ``var_names``: Ensembl ids, ``var['SYMBOL']``: gene symbols;
- ``obs``: ``in_tissue``, ``array_row``, ``array_col``, ``sample``; only in-tissue spots are kept;
- ``obsm['spatial']``: full-resolution pixel coordinates ``[x, y]`` = ``[pxl_col_in_fullres, pxl_row_in_fullres]``;
- ``uns['spatial'][sample]``: ``images`` (``hires``/``lowres`` uint8 RGB or RGBA, those present), ``scalefactors`` (from
  ``scalefactors_json.json``) and ``metadata`` (``software_version``, ``chemistry_description`` when the h5 has them).

``scanpy.read_visium`` is not used: it is deprecated and needs a ``library_ids`` attribute that some matrices lack;
the library id here is the sample name given by the caller.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np

from tissuemap.counts import check_raw_counts
from tissuemap.errors import InputError
from tissuemap.io.positions import find_positions, read_positions
from tissuemap.locations import BIN_SIZE_KEY, locations_of
from tissuemap.log import logger

MATRIX_FILES = ("filtered_feature_bc_matrix.h5", "raw_feature_bc_matrix.h5")
IMAGE_FILES = {"hires": "tissue_hires_image.png", "lowres": "tissue_lowres_image.png"}
METADATA_ATTRIBUTES = ("software_version", "chemistry_description")


def find_matrix(outs_dir: Path) -> Path:
    """The filtered matrix h5 of ``outs_dir``, else the raw one; :class:`InputError` when neither is there."""
    for name in MATRIX_FILES:
        if (outs_dir / name).is_file():
            return outs_dir / name
    raise InputError(
        f"{outs_dir}: no {' or '.join(MATRIX_FILES)} in this folder; give the Space Ranger outs/ folder of the sample"
    )


def read_scalefactors(outs_dir: Path) -> dict:
    """``spatial/scalefactors_json.json`` as a dict, or an empty dict when the file is absent."""
    path = outs_dir / "spatial" / "scalefactors_json.json"
    if not path.is_file():
        logger.warning("%s: not found; spots cannot be drawn over the tissue images", path)
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise InputError(
            f"{path}: not valid JSON ({err}); copy it again from the Space Ranger spatial/ folder"
        ) from None


def read_images(outs_dir: Path) -> dict[str, np.ndarray]:
    """The tissue images present in ``outs_dir/spatial`` as uint8 RGB(A) arrays, keyed ``hires``/``lowres``."""
    from PIL import Image

    images = {}
    for key, name in IMAGE_FILES.items():
        path = outs_dir / "spatial" / name
        if path.is_file():
            try:
                with Image.open(path) as image:
                    # keep transparency when the file has it: a fully transparent image must not turn black
                    images[key] = np.asarray(image.convert("RGBA" if "A" in image.getbands() else "RGB"))
            except OSError as err:
                raise InputError(f"{path}: not a readable PNG image ({err}); copy it again or remove it") from None
    return images


def read_matrix_metadata(matrix_path: Path) -> dict[str, str]:
    """``software_version`` and ``chemistry_description`` attributes of a 10x h5 file, those present."""
    import h5py

    with h5py.File(matrix_path, "r") as handle:
        attributes = {name: handle.attrs[name] for name in METADATA_ATTRIBUTES if name in handle.attrs}
    return {name: value.decode() if isinstance(value, bytes) else str(value) for name, value in attributes.items()}


def read_matrix(matrix_path: Path):
    """Read a 10x feature-barcode h5 (gene expression features only), var_names = Ensembl ids, var['SYMBOL']."""
    import scanpy as sc
    import scipy.sparse as sp

    try:
        with warnings.catch_warnings():
            # symbols repeat (e.g. TBCE); var_names become the unique Ensembl ids below
            warnings.filterwarnings("ignore", message="Variable names are not unique")
            adata = sc.read_10x_h5(matrix_path)
    except (OSError, KeyError, ValueError) as err:
        raise InputError(
            f"{matrix_path}: not a 10x feature-barcode matrix h5 ({err}); give the file written by Space Ranger"
        ) from None
    adata.var["SYMBOL"] = adata.var_names.astype(str)
    adata.var_names = adata.var.pop("gene_ids").astype(str).to_numpy()
    if not adata.var_names.is_unique:
        logger.warning("%s: some feature ids repeat; suffixes -1, -2... make them unique", matrix_path)
        adata.var_names_make_unique()
    adata.var_names.name = None
    adata.obs_names.name = None
    adata.X = sp.csr_matrix(adata.X, dtype=np.float32)
    check_raw_counts(adata.X, str(matrix_path), adata.obs_names, adata.var_names)
    return adata


def read_spaceranger(outs_dir: str | Path, sample: str):
    """Read the in-tissue spots of a Space Ranger ``outs/`` folder.

    Parameters
    ----------
    outs_dir
        Folder holding ``filtered_feature_bc_matrix.h5`` (or ``raw_feature_bc_matrix.h5``, then restricted to the
        in-tissue spots) and ``spatial/`` with a positions file; the scale factors and images are optional.
    sample
        Sample name (from the samplesheet): becomes ``obs['sample']`` and the library id in ``uns['spatial']``.

    Returns
    -------
    AnnData in the layout described in this module's docstring.
    """
    outs_dir = Path(outs_dir)
    matrix_path = find_matrix(outs_dir)
    positions_path = find_positions(outs_dir)
    scalefactors = read_scalefactors(outs_dir)
    locations = locations_of(scalefactors.get(BIN_SIZE_KEY))
    adata = read_matrix(matrix_path)
    positions = read_positions(positions_path, adata.obs_names, matrix_path.name)
    in_tissue = positions["in_tissue"].to_numpy() == 1
    logger.info(
        "%s: %d of %d %s are in the tissue (positions from %s)",
        matrix_path, int(in_tissue.sum()), adata.n_obs, locations.many, positions_path.name,
    )
    if not in_tissue.any():
        raise InputError(
            f"{positions_path}: no {locations.one} of {matrix_path.name} is marked in_tissue=1; check the run's "
            "outputs"
        )
    adata = adata[in_tissue].copy()
    positions = positions[in_tissue]
    for column in ("in_tissue", "array_row", "array_col"):
        adata.obs[column] = positions[column].to_numpy().astype(np.int64)
    adata.obs["sample"] = sample
    adata.obsm["spatial"] = positions[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(dtype=np.float64)
    images = read_images(outs_dir)
    metadata = read_matrix_metadata(matrix_path)
    adata.uns["spatial"] = {
        sample: {"images": images, "scalefactors": scalefactors, "metadata": metadata}
    }
    logger.info(
        "%s: %d %s x %d genes, images: %s, Space Ranger version: %s",
        sample, adata.n_obs, locations.many, adata.n_vars, ", ".join(images) or "none", metadata.get("software_version", "unknown"),
    )
    return adata
