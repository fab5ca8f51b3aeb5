"""Cells per spot counted on the image (``--cell-counts``; samplesheet column ``cell_counts``).

A per-sample CSV with the columns ``barcode`` and ``n_cells`` (e.g. nuclei segmented on the H&E image) gives each
listed spot its own expected number of cells: it replaces N̂, the sample's ``n_cells_per_location``, as the prior mean
of n_s for that spot (spec §3: n_s ~ Gamma(N̂_s, 1)). Rules:

- spots not in the file, and rows whose ``n_cells`` is empty, keep the sample's N̂;
- a count of 0 becomes :data:`MIN_CELLS_PER_SPOT` (a Gamma prior needs a positive mean, and a spot that passed QC
  holds RNA, so segmentation most likely missed its cells): its prior then favours very few cells without
  forbidding more;
- barcodes of the file that are not spots of the sample (dropped by QC, or outside the tissue) are ignored; a file
  that matches no spot at all is an error (most likely another sample's file);
- a value that is not a number, negative or infinite, a repeated barcode, or missing columns are one-line errors.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from tissuemap.errors import InputError
from tissuemap.log import logger

MIN_CELLS_PER_SPOT = 0.5
COLUMNS = ("barcode", "n_cells")


def read_cell_counts(path: str | os.PathLike) -> pd.Series:
    """The file's counts as barcode -> number of cells (float); rows with an empty ``n_cells`` are left out.

    Raises
    ------
    InputError
        If the file cannot be read as a CSV, lacks a column of :data:`COLUMNS`, repeats a barcode, or holds a value
        that is not a finite number of at least 0.
    """
    path = Path(path)
    try:
        table = pd.read_csv(path, dtype=str, skipinitialspace=True)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: cannot be read as a CSV table ({str(err).splitlines()[0]}); give the columns "
                         "barcode,n_cells") from None
    missing = [column for column in COLUMNS if column not in table.columns]
    if missing:
        raise InputError(f"{path}: no column {missing[0]!r}; a cell counts file has the header barcode,n_cells")
    table = table[list(COLUMNS)]
    table = table[table["barcode"].notna()]
    repeated = table["barcode"][table["barcode"].duplicated()]
    if len(repeated):
        raise InputError(f"{path}: barcode {repeated.iloc[0]!r} appears more than once; give each spot one row")
    values = pd.to_numeric(table["n_cells"], errors="coerce")
    bad = (table["n_cells"].notna() & values.isna()) | ~np.isfinite(values.fillna(0)) | (values < 0)
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise InputError(f"{path}: row {row + 2} (barcode {table['barcode'].iloc[row]!r}), column 'n_cells' is "
                         f"{table['n_cells'].iloc[row]!r}; give a number of cells of at least 0")
    counts = pd.Series(values.to_numpy(dtype=np.float64), index=table["barcode"].to_numpy(), name="n_cells")
    return counts[counts.notna()]


def spot_cells_prior(counts: pd.Series, barcodes: pd.Index, n_cells_per_location: float, where: str,
                     sample: str) -> np.ndarray:
    """N̂ of every spot of a sample: its count (floored at :data:`MIN_CELLS_PER_SPOT`), else the sample's N̂.

    ``where`` names the file in messages. Raises :class:`InputError` if no barcode of the file is a spot of the
    sample.
    """
    listed = barcodes.isin(counts.index)
    if not listed.any():
        raise InputError(f"{where}: none of its {len(counts)} barcodes is a spot of sample {sample!r} (e.g. "
                         f"{counts.index[0] if len(counts) else 'none'!r} vs {barcodes[0]!r}); give this sample's "
                         "cell counts")
    prior = np.full(len(barcodes), float(n_cells_per_location))
    values = counts.reindex(barcodes[listed]).to_numpy()
    floored = int((values < MIN_CELLS_PER_SPOT).sum())
    prior[listed] = np.maximum(values, MIN_CELLS_PER_SPOT)
    logger.info("%s: cells per spot from %s for %d of %d spots (median %g, %d zero counts raised to %g); the "
                "other %d keep N_cells_per_location %g; %d barcodes of the file are not spots of the sample",
                sample, where, int(listed.sum()), len(barcodes), float(np.median(values)), floored,
                MIN_CELLS_PER_SPOT, int((~listed).sum()), n_cells_per_location,
                int((~counts.index.isin(barcodes)).sum()))
    return prior


def parse_cell_counts_options(values: tuple[str, ...] | list[str]) -> dict[str, Path]:
    """``--cell-counts`` values, each ``SAMPLE=FILE`` or a bare ``FILE`` (key ``""``: the only sample mapped), as
    sample -> file. Raises :class:`InputError` for a missing file or a sample given twice."""
    files: dict[str, Path] = {}
    for value in values:
        sample, separator, file = value.partition("=")
        if not separator or Path(value).is_file():
            sample, file = "", value
        if sample in files:
            raise InputError(f"--cell-counts {value}: sample {sample or 'of the bare FILE'!r} is given twice; give "
                             "one file per sample")
        if not Path(file).is_file():
            raise InputError(f"--cell-counts {value}: {file} is not a file; give SAMPLE=FILE (or FILE when one sample "
                             "is mapped) with the columns barcode,n_cells")
        files[sample] = Path(file)
    return files
