"""Visium HD bins drawn as what they are: squares of their real size, rasterised into one image per map.

Hundreds of thousands of bins drawn as patches or markers make slow figures; on their square grid a map is an array
with one pixel per bin, shown with ``imshow`` and placed by the affine map from grid indices (``array_col``,
``array_row``) to plot coordinates, fitted on the bins' positions: a rotated or mirrored grid is drawn right, each
pixel exactly covering its bin. The figure's cost no longer depends on the number of bins.

A sample is drawn this way when its scale factors give ``bin_size_um`` (Visium HD; see
:mod:`tissuemap.io.visium_hd`); standard Visium spots stay circles.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Fitted grid positions further than this (in bins) from a whole index mean the bins are not on one square grid.
GRID_TOLERANCE = 0.25


@dataclass(frozen=True)
class BinGrid:
    """Where each bin sits on its square grid, and how the grid lies in the plot.

    Attributes
    ----------
    rows, columns
        Each bin's cell in the raster (0-based).
    shape
        (rows, columns) of the raster.
    to_plot
        3 x 3 affine matrix taking (column, row, 1) of the raster to (x, y, 1) in plot units (bin centres).
    """

    rows: np.ndarray
    columns: np.ndarray
    shape: tuple[int, int]
    to_plot: np.ndarray

    @property
    def side(self) -> float:
        """A bin's side in plot units."""
        return float(np.sqrt(abs(np.linalg.det(self.to_plot[:2, :2]))))

    def raster(self, values: np.ndarray) -> np.ndarray:
        """Per-bin ``values`` (bins, or bins x 4 RGBA colours) as the raster: NaN (transparent) where no bin is."""
        values = np.asarray(values, dtype=np.float32)  # half the memory of float64 on a 2 um grid of 10^7 cells
        raster = np.full((*self.shape, *values.shape[1:]), np.nan if values.ndim == 1 else 0.0, dtype=np.float32)
        raster[self.rows, self.columns] = values
        return raster

    def locate(self, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The raster cells (rows, columns) of points in plot units, those inside the raster."""
        cells = np.column_stack([xy, np.ones(len(xy))]) @ np.linalg.inv(self.to_plot).T
        columns, rows = np.rint(cells[:, 0]).astype(int), np.rint(cells[:, 1]).astype(int)
        inside = (rows >= 0) & (rows < self.shape[0]) & (columns >= 0) & (columns < self.shape[1])
        return rows[inside], columns[inside]

    def show(self, ax, raster: np.ndarray, **style):
        """Draw ``raster`` (from :meth:`raster`) on ``ax``, each pixel on its bin; returns the ``AxesImage``."""
        from matplotlib.transforms import Affine2D

        n_rows, n_columns = self.shape
        style = {"interpolation": "nearest", **style}
        return ax.imshow(raster, extent=(-0.5, n_columns - 0.5, n_rows - 0.5, -0.5), origin="upper",
                         transform=Affine2D(self.to_plot) + ax.transData, **style)


def bin_grid(obs, xy: np.ndarray, scalefactors: dict, scale: float) -> BinGrid | None:
    """The :class:`BinGrid` of a Visium HD sample, or ``None`` for spots (no ``bin_size_um`` in ``scalefactors``).

    Parameters
    ----------
    obs
        The bins' ``obs``: ``array_row``/``array_col`` place them on the grid; without them, their positions do
        (an axis-aligned grid assumed).
    xy
        Bin centres in plot units (bins x 2).
    scalefactors
        Space Ranger's scale factors of the bins (``bin_size_um``, ``microns_per_pixel``).
    scale
        Plot units per full-resolution pixel.
    """
    if "bin_size_um" not in scalefactors or len(xy) < 3:
        return None
    if {"array_row", "array_col"} <= set(obs.columns):
        rows = obs["array_row"].to_numpy(dtype=np.int64)
        columns = obs["array_col"].to_numpy(dtype=np.int64)
    else:
        if "microns_per_pixel" not in scalefactors:
            return None
        side = float(scalefactors["bin_size_um"]) / float(scalefactors["microns_per_pixel"]) * scale
        columns, rows = (np.rint((xy - xy.min(axis=0)) / side).astype(np.int64).T)
    rows, columns = rows - rows.min(), columns - columns.min()
    design = np.column_stack([columns, rows, np.ones(len(rows))])
    if np.linalg.matrix_rank(design) < 3:
        return None  # all bins in one row or column: the grid's orientation is unknown
    coefficients, *_ = np.linalg.lstsq(design, xy, rcond=None)  # 3 x 2: xy = design @ coefficients
    to_plot = np.vstack([coefficients.T, [0.0, 0.0, 1.0]])
    grid = BinGrid(rows=rows, columns=columns, shape=(int(rows.max()) + 1, int(columns.max()) + 1), to_plot=to_plot)
    misplaced = np.abs(xy - design @ coefficients).max() / grid.side
    if not misplaced < GRID_TOLERANCE:
        return None  # not a square grid after all: the caller draws the bins as spots
    return grid
