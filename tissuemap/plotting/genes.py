"""The gene filter's diagnostic plot: where the reference's genes fall relative to the filter's thresholds."""

from __future__ import annotations

import os

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import LogNorm


def _rejected_region(
    x_limits: tuple[float, float],
    y_limits: tuple[float, float],
    x_nonz_mean: float,
    y_cell_count: float,
    y_cell_percentage: float,
) -> np.ndarray:
    """Outline (x, y vertices) of the rejected area in log10 space, clipped to the axes.

    A gene is rejected below the cell-percentage line unless it lies both above the cell-count line and right of
    the nonz_mean line: an L-shaped area, the union of two rectangles sharing the bottom-left corner.
    """
    x_low, x_high = x_limits
    y_low, _ = y_limits
    top = max(y_low, y_cell_percentage)
    step = min(max(y_low, y_cell_count), top)
    corner = min(max(x_low, x_nonz_mean), x_high)
    return np.array(
        [(x_low, y_low), (x_high, y_low), (x_high, step), (corner, step), (corner, top), (x_low, top)]
    )


def plot_gene_filter(adata, path: str | os.PathLike, title: str) -> None:
    """2-D histogram of log10(nonz_mean) (x) against log10(n_cells) (y) of every detected gene, to a PNG.

    The rejected region is shaded and the three thresholds are drawn; the title gives the genes kept out of all.

    Parameters
    ----------
    adata
        Output of :func:`tissuemap.genes.filter_genes` (reads ``uns['filter_genes']``).
    path
        PNG file to write.
    title
        Start of the title (e.g. the reference's name).
    """
    summary = adata.uns["filter_genes"]
    genes = summary["genes"]
    detected = genes[genes["n_cells"] > 0]
    x = np.log10(detected["nonz_mean"].to_numpy(dtype=float))
    y = np.log10(detected["n_cells"].to_numpy(dtype=float))

    # thresholds at or below zero reject nothing on their own: log10 of them lies off the axes' bottom/left
    def log10_or_minus_inf(value: float) -> float:
        return float(np.log10(value)) if value > 0 else -np.inf

    x_nonz_mean = log10_or_minus_inf(summary["nonz_mean_cutoff"])
    y_cell_count = log10_or_minus_inf(summary["cell_count_cutoff"])
    cell_percentage_count = summary["n_cells_total"] * summary["cell_percentage_cutoff2"]
    y_cell_percentage = log10_or_minus_inf(cell_percentage_count)

    finite = [v for v in (x_nonz_mean,) if np.isfinite(v)]
    x_limits = (min([*x, *finite]) - 0.05, max([*x, *finite]) + 0.05)
    finite = [v for v in (y_cell_count, y_cell_percentage) if np.isfinite(v)]
    y_limits = (min([*y, *finite, 0.0]) - 0.05, max([*y, *finite]) + 0.05)

    fig, axis = plt.subplots(figsize=(7, 5.5))
    # shading behind the histogram: empty bins are transparent, so the rejected area shows around the genes in it
    axis.fill(*_rejected_region(x_limits, y_limits, x_nonz_mean, y_cell_count, y_cell_percentage).T,
              color="lightgrey", linewidth=0, zorder=0, label="rejected")
    *_, image = axis.hist2d(x, y, bins=60, range=[x_limits, y_limits], norm=LogNorm(), cmap="viridis", zorder=1)
    fig.colorbar(image, ax=axis, label="genes")
    if np.isfinite(x_nonz_mean):
        axis.axvline(x_nonz_mean, color="crimson", linestyle="--",
                     label=f"nonz_mean_cutoff = {summary['nonz_mean_cutoff']:g}")
    if np.isfinite(y_cell_count):
        axis.axhline(y_cell_count, color="darkorange", linestyle=":",
                     label=f"cell_count_cutoff = {summary['cell_count_cutoff']:g}")
    if np.isfinite(y_cell_percentage):
        axis.axhline(y_cell_percentage, color="black", linestyle="-.",
                     label=f"cell_percentage_cutoff2 = {summary['cell_percentage_cutoff2']:g} "
                           f"({cell_percentage_count:g} cells)")
    axis.set_xlim(x_limits)
    axis.set_ylim(y_limits)
    axis.set_xlabel("log10(mean count in the cells where detected)")
    axis.set_ylabel("log10(number of cells where detected)")
    axis.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, fontsize="small", frameon=False)
    axis.set_title(
        f"{title}: {summary['n_genes_kept']:,} of {summary['n_genes_in']:,} genes kept\n"
        f"({summary['n_genes_undetected']:,} genes detected in no cell are not shown)",
        fontsize="medium",
    )
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
