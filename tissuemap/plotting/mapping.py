"""QC figures of the mapping step, drawn from a sample's exported AnnData (:func:`tissuemap.mapping.export_mapping`).

The training history and observed-vs-expected counts use :mod:`tissuemap.plotting.training`.
"""

from __future__ import annotations

import math
import os

import matplotlib.pyplot as plt
import numpy as np

from tissuemap.locations import sample_locations
from tissuemap.plotting.bins import bin_grid

PANEL_SIZE = 3.4  # inches per spatial panel
MAX_COLUMNS = 4  # few enough per row that each panel's spots stay visible


def plot_cells_vs_counts(adata, path: str | os.PathLike, sample: str) -> None:
    """Total estimated cells per spot against its total count, coloured by detection sensitivity; and the detection
    sensitivity's distribution around its batch mean.

    Spots where many cells give few counts have low detection; a tight relation between cells and counts with
    detection near its batch mean means the model needed little per-spot correction.
    """
    locations = sample_locations(adata, sample)
    counts = np.asarray(adata.X.sum(axis=1)).ravel()
    cells = adata.obs["total_cell_abundance"].to_numpy(dtype=float)
    detection = adata.obs["detection_sensitivity"].to_numpy(dtype=float)
    batch_mean = float(np.ravel(adata.uns["mod"]["post_sample_means"]["y_e"])[0])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), layout="constrained")
    try:
        points = axes[0].scatter(counts, cells, c=detection, s=6, cmap="viridis")
        fig.colorbar(points, ax=axes[0], label="detection sensitivity y_s")
        axes[0].set_xlabel(f"total count per {locations.one} (shared genes)")
        axes[0].set_ylabel(f"total estimated cells per {locations.one} (Σ_f mean w_sf)")
        axes[0].set_title("estimated cells vs counts")
        axes[1].hist(detection, bins=50, color="tab:blue")
        axes[1].axvline(batch_mean, color="black", linestyle="--", label=f"slide mean y_e = {batch_mean:.3g}")
        axes[1].set_xlabel("detection sensitivity y_s (posterior mean)")
        axes[1].set_ylabel(locations.many)
        axes[1].legend(frameon=False)
        fig.suptitle(f"{sample}: cell abundance and detection")
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)


def plot_cell_abundance_spatial(adata, path: str | os.PathLike, sample: str, summary: str = "q05") -> None:
    """One panel per cell type: spots at their coordinates coloured by the estimated cells (default: q05, 'at least
    this many cells'), each panel on its own colour scale; Visium HD bins as squares of their size, rasterised."""
    table = adata.obsm[f"{summary}_cell_abundance_w_sf"]
    cell_types = adata.uns["mod"]["factor_names"]
    xy = np.asarray(adata.obsm["spatial"], dtype=float)
    # Visium HD bins: one raster per panel, each bin a square of its size (full-resolution units, no image here)
    bins = bin_grid(adata.obs, xy, adata.uns.get("spatial", {}).get(sample, {}).get("scalefactors", {}), 1.0)
    columns = min(MAX_COLUMNS, len(cell_types))
    rows = math.ceil(len(cell_types) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(PANEL_SIZE * columns, PANEL_SIZE * rows), squeeze=False,
                             layout="constrained")
    try:
        for axis, cell_type, column in zip(axes.flat, cell_types, table.columns):
            values = table[column].to_numpy(dtype=float)
            limits = {"cmap": "magma", "vmin": 0, "vmax": max(float(np.quantile(values, 0.99)), 1e-6)}
            if bins is not None:
                points = bins.show(axis, bins.raster(values), **limits)
                margin = 2 * bins.side
                axis.set_xlim(xy[:, 0].min() - margin, xy[:, 0].max() + margin)
                axis.set_ylim(xy[:, 1].min() - margin, xy[:, 1].max() + margin)
            else:
                points = axis.scatter(xy[:, 0], xy[:, 1], c=values, s=10, **limits)
            fig.colorbar(points, ax=axis, shrink=0.8)
            axis.set_title(str(cell_type), fontsize=9)
        for axis in axes.flat:
            axis.set_aspect("equal")
            drawn = bool(axis.collections or axis.images)
            # image rows grow downwards: the largest y at the bottom, as on the slide image
            if drawn:
                axis.invert_yaxis()
            axis.set_xticks([])
            axis.set_yticks([])
            axis.set_frame_on(drawn)
        fig.suptitle(f"{sample}: estimated cells per {sample_locations(adata, sample).one} ({summary})")
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
