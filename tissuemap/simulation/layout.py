"""Where spots are: the Visium capture area, the tissue section laid on it, and the section's zones.

A Visium capture area is a hexagonal grid of 78 rows x 128 columns (4,992 spots, 100 um apart, 55 um wide): row r
holds the columns of r's parity. Every sample uses the same grid and the same barcode at each position, as real
slides do. Data sets with more spots than fit a real capture area get a proportionally larger grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from tissuemap.simulation.parameters import SimulationParameters
from tissuemap.simulation.profiles import zone_names
from tissuemap.simulation.sampling import random_barcodes, smooth_field

VISIUM_ROWS, VISIUM_COLUMNS = 78, 128
SPOT_SPACING_UM = 100.0
ROW_SPACING_UM = SPOT_SPACING_UM * np.sqrt(3) / 2
MAX_TISSUE_FRACTION = 0.85  # of the capture area a section may cover
ZONE_BOUNDARY_UM = SPOT_SPACING_UM / 2  # width over which neighbouring zones' compositions blend


def capture_area(n_spots: int, rng: np.random.Generator) -> pd.DataFrame:
    """All spot positions of the capture area, indexed by barcode: ``array_row``, ``array_col``, ``x_um``, ``y_um``."""
    scale = max(1.0, np.sqrt(n_spots / (MAX_TISSUE_FRACTION * VISIUM_ROWS * VISIUM_COLUMNS / 2)))
    n_rows = int(np.ceil(VISIUM_ROWS * scale))
    n_columns = 2 * int(np.ceil(VISIUM_COLUMNS * scale / 2))
    rows, columns = np.meshgrid(np.arange(n_rows), np.arange(n_columns), indexing="ij")
    on_grid = (rows + columns) % 2 == 0
    rows, columns = rows[on_grid], columns[on_grid]
    return pd.DataFrame(
        {
            "array_row": rows,
            "array_col": columns,
            "x_um": columns * SPOT_SPACING_UM / 2,
            "y_um": rows * ROW_SPACING_UM,
        },
        index=pd.Index(random_barcodes(rng, len(rows)), name="barcode"),
    )


@dataclass
class TissueSection:
    """One sample's tissue on the capture area.

    ``in_tissue``: bool per capture-area position. ``spots``: the tissue spots, indexed by barcode in sorted order
    (as Space Ranger's matrix), with the capture-area columns and ``zone``. ``membership``: spots x zones weights
    summing to 1, blending neighbouring zones near their boundaries.
    """

    in_tissue: np.ndarray
    spots: pd.DataFrame
    membership: np.ndarray


def tissue_section(area: pd.DataFrame, params: SimulationParameters, rng: np.random.Generator,
                   area_per_spot_um2: float = SPOT_SPACING_UM * ROW_SPACING_UM) -> TissueSection:
    """Lay an irregular blob of exactly ``n_spots`` spots on the capture area and cut it into ``n_zones`` zones.

    ``area_per_spot_um2``: the capture area each position stands for (Visium's hexagon; a Visium HD bin's square),
    which sets the tissue's size in micrometres and so the scale of its zones' warp.

    The blob: an ellipse of random aspect whose radius wobbles with angle. Zones: k-means regions of the spots'
    coordinates after a smooth random warp, so that their boundaries curve.
    """
    coords = area[["x_um", "y_um"]].to_numpy()
    extent = coords.max(axis=0)
    centre = extent * (0.5 + rng.uniform(-0.1, 0.1, 2))
    aspect = rng.uniform(0.8, 1.25)
    offset = coords - centre
    angle = np.arctan2(offset[:, 1], offset[:, 0])
    harmonics = np.arange(2, 5)
    amplitude, phase = rng.uniform(0, 0.12, 3), rng.uniform(0, 2 * np.pi, 3)
    wobble = 1 + (amplitude * np.cos(np.outer(angle, harmonics) + phase)).sum(axis=1)
    radius = np.hypot(offset[:, 0] / aspect, offset[:, 1] * aspect) / wobble
    in_tissue = np.zeros(len(area), dtype=bool)
    in_tissue[np.argsort(radius, kind="stable")[: params.n_spots]] = True

    spots = area.loc[in_tissue].sort_index()
    spot_coords = spots[["x_um", "y_um"]].to_numpy()
    tissue_radius = np.sqrt(params.n_spots * area_per_spot_um2 / np.pi)
    warped = spot_coords + 0.25 * tissue_radius * smooth_field(rng, spot_coords, tissue_radius / 3, n_fields=2)
    distance = np.linalg.norm(warped[:, None, :] - _kmeans_centres(warped, params.n_zones, rng)[None], axis=2)
    zone = distance.argmin(axis=1)
    weights = np.exp(-(distance - distance.min(axis=1, keepdims=True)) / ZONE_BOUNDARY_UM)
    spots = spots.assign(zone=pd.Categorical.from_codes(zone, categories=zone_names(params.n_zones)))
    return TissueSection(in_tissue=in_tissue, spots=spots, membership=weights / weights.sum(axis=1, keepdims=True))


def _kmeans_centres(points: np.ndarray, n_centres: int, rng: np.random.Generator, n_iterations: int = 20) -> np.ndarray:
    """Centres of ``n_centres`` compact regions: farthest-point start from a random point, then Lloyd iterations."""
    centres = [points[rng.integers(len(points))]]
    for _ in range(n_centres - 1):
        nearest = np.min(np.linalg.norm(points[:, None] - np.array(centres)[None], axis=2), axis=1)
        centres.append(points[nearest.argmax()])
    centres = np.array(centres)
    for _ in range(n_iterations):
        label = np.linalg.norm(points[:, None] - centres[None], axis=2).argmin(axis=1)
        for k in range(n_centres):
            if (label == k).any():
                centres[k] = points[label == k].mean(axis=0)
    return centres
