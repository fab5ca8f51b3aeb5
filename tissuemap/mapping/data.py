"""The mapping's inputs: QC'd spatial samples and the reference signatures, read and checked, and each sample's
hyper-parameters (from the mapping plan, the file, or the options); cell counts files attached to their samples."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from tissuemap.counts import check_raw_counts
from tissuemap.defaults import MAPPING_DETECTION_ALPHA, MAPPING_N_CELLS_PER_LOCATION
from tissuemap.errors import InputError
from tissuemap.locations import Locations, sample_locations
from tissuemap.log import logger
from tissuemap.samplesheet import validate_name


@dataclass
class SpatialSample:
    """One QC'd Visium sample and the mapping hyper-parameters that apply to it."""

    name: str
    adata: object  # AnnData
    n_cells_per_location: float
    detection_alpha: float
    slide: str
    path: str
    # N̂ of every spot from a cell counts file (tissuemap.cell_counts), None: every spot has n_cells_per_location
    cell_counts: np.ndarray | None = None
    cell_counts_path: str = ""

    @property
    def locations(self) -> Locations:
        """What its locations are called in messages: spots, or Visium HD bins (:mod:`tissuemap.locations`)."""
        return sample_locations(self.adata, self.name)

    def spot_cells_prior(self) -> np.ndarray:
        """N̂ of every spot: its count from the cell counts file, else the sample's ``n_cells_per_location``."""
        if self.cell_counts is not None:
            return self.cell_counts
        return np.full(self.adata.n_obs, self.n_cells_per_location)


def check_positive(value, what: str, where: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{where}: {what} {value!r} is not a number; give a positive number") from None
    if not (math.isfinite(number) and number > 0):
        raise InputError(f"{where}: {what} is {value!r}; it must be a positive number")
    return number


def check_training_options(max_epochs: int, lr: float, batch_size: int | None = None) -> None:
    """Raise :class:`InputError` unless ``max_epochs`` >= 1, ``lr`` > 0 and ``batch_size`` is ``None``, ``"auto"``
    or >= 1."""
    if not (isinstance(max_epochs, (int, np.integer)) and max_epochs >= 1):
        raise InputError(f"--max-epochs {max_epochs}: must be a whole number of at least 1")
    check_positive(lr, "the learning rate", "--lr")
    if batch_size not in (None, "auto") and not (isinstance(batch_size, (int, np.integer)) and batch_size >= 1):
        raise InputError(f"--batch-size {batch_size}: must be a whole number of spots, at least 1 (or leave it out "
                         "to train on all the data, or auto)")


def read_qc_sample(
    path: str | os.PathLike,
    n_cells_per_location: float | None = MAPPING_N_CELLS_PER_LOCATION,
    detection_alpha: float = MAPPING_DETECTION_ALPHA,
    plan: dict[str, dict] | None = None,
) -> SpatialSample:
    """Read one QC'd sample (``tissuemap qc`` output) and the hyper-parameters to map it with.

    The sample's ``n_cells_per_location``, ``detection_alpha`` and ``slide`` come from its row of the mapping plan
    (``plan``, :func:`tissuemap.plan.read_plan`), else from ``uns['tissuemap']`` of the file (``tissuemap qc`` run
    by hand with those options), else from the arguments. The sample is named by ``uns['tissuemap']['sample']``,
    else by its file name without ``.qc.h5ad``.

    Raises
    ------
    InputError
        If the file cannot be read, lacks counts or coordinates, has no raw integer counts, repeats gene names, or a
        hyper-parameter is not positive.
    """
    import anndata as ad

    path = Path(path)
    try:
        adata = ad.read_h5ad(path)
    except (OSError, KeyError) as err:
        raise InputError(
            f"{path}: cannot be read as an h5ad file ({err}); give a NAME.qc.h5ad from tissuemap qc"
        ) from None
    if adata.X is None or adata.n_obs == 0 or adata.n_vars == 0 or "spatial" not in adata.obsm:
        raise InputError(
            f"{path}: holds no count matrix (X), no spots or no spot coordinates (obsm['spatial']); "
            "give a NAME.qc.h5ad from tissuemap qc"
        )
    check_raw_counts(adata.X, str(path), adata.obs_names, adata.var_names)
    repeated = adata.var_names[adata.var_names.duplicated()]
    if len(repeated):
        raise InputError(f"{path}: gene {repeated[0]!r} appears more than once in var_names; make gene names unique")
    settings = dict(adata.uns.get("tissuemap", {}))
    name = validate_name(str(settings.get("sample") or path.name.removesuffix(".h5ad").removesuffix(".qc")),
                         where=str(path))
    where = f"{path}: uns['tissuemap']"
    if plan is not None:
        if name not in plan:
            raise InputError(f"{path}: sample {name!r} is not in the mapping plan (--plan); plan this samplesheet's "
                             "samples with tissuemap plan")
        settings, where = plan[name], "--plan"
    if "n_cells_per_location" not in settings and n_cells_per_location is None:
        raise InputError(f"{path}: no n_cells_per_location for sample {name!r}; give --n-cells-per-location (the "
                         "expected cells per spot) or --plan")
    n_cells = check_positive(settings.get("n_cells_per_location", n_cells_per_location), "n_cells_per_location",
                        where if "n_cells_per_location" in settings else "--n-cells-per-location")
    alpha = check_positive(settings.get("detection_alpha", detection_alpha), "detection_alpha",
                      where if "detection_alpha" in settings else "--detection-alpha")
    slide = str(settings.get("slide") or name)
    sample = SpatialSample(name, adata, n_cells, alpha, slide, str(path))
    logger.info("%s: %d %s x %d genes from %s (N_cells_per_location %g, detection_alpha %g, slide %s)",
                name, adata.n_obs, sample.locations.many, adata.n_vars, path, n_cells, alpha, slide)
    return sample


def read_signatures(path: str | os.PathLike) -> pd.DataFrame:
    """Read reference signatures: a CSV with genes as rows (first column: gene names) and one column per cell type.

    Raises
    ------
    InputError
        If the file cannot be parsed, holds fewer than one type, repeats a gene or type, or holds missing, negative or
        non-numeric values, or a type whose signature is all zero.
    """
    path = Path(path)
    try:
        signatures = pd.read_csv(path, index_col=0)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise InputError(
            f"{path}: cannot be read as a CSV table ({err}); give genes as rows and cell types as columns"
        ) from None
    if signatures.shape[1] == 0 or signatures.shape[0] == 0:
        raise InputError(f"{path}: no cell type columns or no gene rows; give genes as rows and cell types as columns")
    signatures.index = signatures.index.astype(str)
    signatures.columns = signatures.columns.astype(str)
    for labels, what in ((signatures.index, "gene"), (signatures.columns, "cell type")):
        repeated = labels[labels.duplicated()]
        if len(repeated):
            raise InputError(f"{path}: {what} {repeated[0]!r} appears more than once; make {what} names unique")
    non_numeric = [column for column in signatures.columns if not pd.api.types.is_numeric_dtype(signatures[column])]
    if non_numeric:
        raise InputError(f"{path}: column {non_numeric[0]!r} is not numeric; every cell type column must hold numbers")
    values = signatures.to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values) | (values < 0)
    if bad.any():
        row, column = np.argwhere(bad)[0]
        raise InputError(
            f"{path}: row {signatures.index[row]!r}, column {signatures.columns[column]!r} is {values[row, column]}; "
            "signatures must be finite and non-negative (expected counts per cell)"
        )
    return signatures.astype(np.float64)


def attach_cell_counts(samples: list[SpatialSample], files: dict[str, str | os.PathLike]) -> None:
    """Read each sample's cell counts file and set its spots' N̂ (:mod:`tissuemap.cell_counts`); the key ``""``
    is the only sample. Raises :class:`InputError` for a file of no sample mapped here or a bad file."""
    from tissuemap.cell_counts import read_cell_counts, spot_cells_prior

    by_name = {sample.name: sample for sample in samples}
    for name, path in files.items():
        if name == "" and len(samples) > 1:
            raise InputError(f"--cell-counts {path}: {len(samples)} samples are mapped; give SAMPLE={path}")
        sample = samples[0] if name == "" else by_name.get(name)
        if sample is None:
            raise InputError(f"--cell-counts {name}={path}: no sample {name!r} is mapped here (samples: "
                             f"{', '.join(by_name)}); name one of them")
        counts = read_cell_counts(path)
        sample.cell_counts = spot_cells_prior(counts, sample.adata.obs_names, sample.n_cells_per_location, str(path),
                                              sample.name)
        sample.cell_counts_path = str(path)


