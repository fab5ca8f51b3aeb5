"""Visium HD-like samples: square bins on a grid, written in Space Ranger's ``outs/binned_outputs/`` layout.

The bins of ``bin_size`` um are drawn as Visium spots are (:mod:`.spatial`: zones, true cells, counts following the
cell2location model, block by block into sparse form), with about two cells per 8 um bin and a lower capture per cell
(``hd_detection_mean``). Each larger Space Ranger bin size is the sum of the drawn bins it covers (2 x 2 of 8 um bins
make a 16 um bin), as Space Ranger aggregates its 2 um bins. Every bin size gets its folder
``binned_outputs/square_NNNum/``: ``filtered_feature_bc_matrix.h5`` (tissue bins, barcodes ``s_008um_RRRRR_CCCCC-1``
sorted), ``spatial/tissue_positions.parquet`` (every bin of the capture area, ``in_tissue`` 0/1, float pixel
positions), ``spatial/scalefactors_json.json`` (with ``bin_size_um`` and ``microns_per_pixel``) and the two images.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from tissuemap.io.visium_hd import BINNED_FOLDER, HD_POSITIONS_FILE, bin_folder_name
from tissuemap.log import logger
from tissuemap.samplesheet import BIN_SIZES
from tissuemap.simulation.image import HIRES_SIZE, LOWRES_SIZE, PIXELS_PER_UM, SlideImage, slide_image, tissue_picture
from tissuemap.simulation.layout import tissue_section
from tissuemap.simulation.parameters import SimulationParameters
from tissuemap.simulation.spaceranger import write_matrix_h5
from tissuemap.simulation.spatial import TissueZones, cell_abundance, spot_counts

HD_SPACERANGER_VERSION = "3.1.2"
HD_TISSUE_FRACTION = 0.5  # of the simulated capture area (a square sized to the tissue) the tissue covers


def hd_grid(side: int, bin_size: int) -> pd.DataFrame:
    """Every bin of a ``side`` x ``side`` grid of ``bin_size`` um squares, indexed by barcode (row-major, the sorted
    order): ``array_row``, ``array_col`` and the bin centre ``x_um``, ``y_um``."""
    rows, columns = (grid.ravel() for grid in np.meshgrid(np.arange(side), np.arange(side), indexing="ij"))
    prefix = f"s_{bin_size:03d}um"
    barcodes = [f"{prefix}_{row:05d}_{column:05d}-1" for row, column in zip(rows.tolist(), columns.tolist())]
    return pd.DataFrame(
        {"array_row": rows, "array_col": columns, "x_um": (columns + 0.5) * bin_size, "y_um": (rows + 0.5) * bin_size},
        index=pd.Index(barcodes, name="barcode"),
    )


def hd_capture_area(n_bins: int, bin_size: int) -> pd.DataFrame:
    """The grid of drawn bins: a square of about ``n_bins / HD_TISSUE_FRACTION`` bins whose side every larger bin
    size divides, so that the aggregated grids cover it exactly."""
    largest_factor = max(BIN_SIZES) // bin_size
    side = largest_factor * int(np.ceil(np.sqrt(n_bins / HD_TISSUE_FRACTION) / largest_factor))
    return hd_grid(side, bin_size)


def larger_bin_sizes(bin_size: int) -> list[int]:
    """The Space Ranger bin sizes made of whole ``bin_size`` bins (8 and 16 for 2; 16 for 8)."""
    return [size for size in BIN_SIZES if size > bin_size and size % bin_size == 0]


def aggregation(spots: pd.DataFrame, factor: int, side: int) -> tuple[sp.csr_matrix, np.ndarray]:
    """The sparse 0/1 matrix (coarse tissue bins x drawn tissue bins) summing ``factor`` x ``factor`` drawn bins
    into one, and each coarse tissue bin's index in the coarse grid of ``side`` x ``side`` bins (row-major)."""
    coarse = (spots["array_row"].to_numpy() // factor) * side + spots["array_col"].to_numpy() // factor
    occupied, member_of = np.unique(coarse, return_inverse=True)
    matrix = sp.csr_matrix((np.ones(len(coarse), dtype=np.int32), (member_of, np.arange(len(coarse)))),
                           shape=(len(occupied), len(coarse)))
    return matrix, occupied


def hd_scalefactors(image: SlideImage, bin_size: int) -> dict[str, float]:
    """Space Ranger's scale factors of one bin size: the image's, ``bin_size_um``, ``microns_per_pixel``, and the
    bin's side in full-resolution pixels as ``spot_diameter_fullres``."""
    return {**image.scalefactors(), "spot_diameter_fullres": bin_size * PIXELS_PER_UM, "bin_size_um": float(bin_size),
            "microns_per_pixel": 1 / PIXELS_PER_UM}


def write_bin_folder(folder: Path, counts: sp.csr_matrix, grid: pd.DataFrame, in_tissue: np.ndarray,
                     genes: pd.DataFrame, image: SlideImage, pictures: dict[str, np.ndarray], bin_size: int,
                     library_id: str) -> None:
    """Write ``binned_outputs/square_NNNum/`` of one bin size (counts: tissue bins in grid order x genes)."""
    from PIL import Image

    spatial = folder / "spatial"
    spatial.mkdir(parents=True)
    write_matrix_h5(folder / "filtered_feature_bc_matrix.h5", counts, grid.index[in_tissue], genes.index,
                    genes["SYMBOL"], library_id, HD_SPACERANGER_VERSION)
    positions = pd.DataFrame({
        "barcode": grid.index,
        "in_tissue": in_tissue.astype(np.int32),
        "array_row": grid["array_row"].to_numpy(np.int32),
        "array_col": grid["array_col"].to_numpy(np.int32),
        "pxl_row_in_fullres": image.offset[0] + grid["y_um"].to_numpy() * PIXELS_PER_UM,
        "pxl_col_in_fullres": image.offset[1] + grid["x_um"].to_numpy() * PIXELS_PER_UM,
    })
    positions.to_parquet(spatial / HD_POSITIONS_FILE, index=False)
    (spatial / "scalefactors_json.json").write_text(json.dumps(hd_scalefactors(image, bin_size), indent=4))
    for resolution, picture in pictures.items():
        Image.fromarray(picture).save(spatial / f"tissue_{resolution}_image.png")


def simulate_hd_sample(staging: Path, name: str, area: pd.DataFrame, zones: TissueZones, cell_types: pd.DataFrame,
                       profiles: pd.DataFrame, platform: np.ndarray, genes: pd.DataFrame,
                       params: SimulationParameters, rng: np.random.Generator) -> dict:
    """Draw one Visium HD sample on ``area`` (:func:`hd_capture_area`); write ``samples/<name>/outs/`` and the
    truth tables (``<name>.cell_abundance.csv`` and ``.spots.csv`` for the drawn bins, and
    ``<name>.square_NNNum.cell_abundance.csv`` per larger bin size); return its ``samples.csv`` row."""
    from PIL import Image

    bin_size = params.bin_size
    section = tissue_section(area, params, rng, area_per_spot_um2=float(bin_size) ** 2)
    abundance = cell_abundance(section, zones, cell_types, params, rng)
    reads = spot_counts(abundance, profiles, platform, replace(params, visium_detection_mean=params.hd_detection_mean),
                        rng)
    image = slide_image(area, rng)
    total_cells = abundance.sum(axis=1)
    # a bin's picture reaches its corners (0.71 of its side from the centre)
    pictures = {resolution: tissue_picture(section, total_cells, image, size, reach_um=0.75 * bin_size)
                for resolution, size in (("hires", HIRES_SIZE), ("lowres", LOWRES_SIZE))}
    outs = staging / "samples" / name / "outs"
    (outs / "spatial").mkdir(parents=True)
    for resolution, picture in pictures.items():
        Image.fromarray(picture).save(outs / "spatial" / f"tissue_{resolution}_image.png")
    side = int(area["array_row"].max()) + 1
    write_bin_folder(outs / BINNED_FOLDER / bin_folder_name(bin_size), reads.counts, area, section.in_tissue, genes,
                     image, pictures, bin_size, name)
    truth = staging / "truth"
    barcodes = section.spots.index
    pd.DataFrame(abundance, index=barcodes, columns=cell_types.index).to_csv(truth / f"{name}.cell_abundance.csv")
    spots = {"zone": section.spots["zone"], "detection_sensitivity": reads.detection, "total_cells": total_cells}
    pd.DataFrame(spots, index=barcodes).to_csv(truth / f"{name}.spots.csv")
    for larger in larger_bin_sizes(bin_size):
        factor = larger // bin_size
        summing, occupied = aggregation(section.spots, factor, side // factor)
        grid = hd_grid(side // factor, larger)
        in_tissue = np.zeros(len(grid), dtype=bool)
        in_tissue[occupied] = True
        write_bin_folder(outs / BINNED_FOLDER / bin_folder_name(larger), (summing @ reads.counts).tocsr(), grid,
                         in_tissue, genes, image, pictures, larger, name)
        pd.DataFrame(summing @ abundance, index=grid.index[occupied], columns=cell_types.index).to_csv(
            truth / f"{name}.{bin_folder_name(larger)}.cell_abundance.csv")
    umis = np.asarray(reads.counts.sum(axis=1)).ravel()
    logger.info(
        "%s (Visium HD, %d um bins; %s aggregated): %d bins, %.1f cells and %.0f UMIs per bin (median), %.1f%% zeros",
        name, bin_size, ", ".join(f"{size} um" for size in larger_bin_sizes(bin_size)) or "none", len(barcodes),
        np.median(total_cells), np.median(umis), 100 * (1 - reads.counts.nnz / np.prod(reads.counts.shape)),
    )
    return {
        "sample": name,
        "spaceranger_version": HD_SPACERANGER_VERSION,
        "bin_size": bin_size,
        "n_spots": len(barcodes),
        "mean_cells_per_spot": total_cells.mean(),
        "detection_mean": reads.detection_mean,
        "ambient_fraction": reads.ambient_fraction,
        "median_umis_per_spot": float(np.median(umis)),
    }
