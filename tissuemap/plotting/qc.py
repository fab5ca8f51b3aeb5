"""QC figures of one sample: metric histograms, and UMIs per spot drawn over the tissue image.

Both read what :func:`tissuemap.qc.run_qc` wrote: kept spots in ``obs``, removed ones in ``uns['qc_removed_spots']``.
The spatial figure is drawn here because ``scanpy.pl.spatial`` is deprecated in favour of squidpy, which tissuemap
does not depend on.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.collections import PatchCollection
from matplotlib.patches import Circle, Patch

from tissuemap.locations import sample_locations
from tissuemap.plotting.bins import bin_grid

HISTOGRAM_BINS = 50
REMOVED_COLOUR = "tab:red"
VISIUM_SPOT_DIAMETER_OVER_DISTANCE = 0.55
# The UMIs-per-spot map's colour scale ends at this quantile: a few very deep spots would otherwise make all the
# others dark (UMIs per spot often span two orders of magnitude).
UMI_SCALE_QUANTILE = 0.99


def plot_qc_histograms(adata, path: str | Path) -> None:
    """Save histograms of UMIs per spot, genes per spot and MT fraction (kept and removed spots stacked); bins for
    a Visium HD sample."""
    sample = adata.uns.get("tissuemap", {}).get("sample", "")
    locations = sample_locations(adata, sample)
    removed = adata.uns.get("qc_removed_spots", pd.DataFrame(columns=["total_counts", "n_genes_by_counts", "mt_frac"]))
    min_counts = adata.uns.get("tissuemap", {}).get("qc", {}).get("min_counts")
    panels = (
        ("total_counts", f"UMIs per {locations.one}"),
        ("n_genes_by_counts", f"genes per {locations.one}"),
        ("mt_frac", "mitochondrial fraction of UMIs"),
    )
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), layout="constrained")
    try:
        has_mt_genes = "MT" in adata.obsm and adata.obsm["MT"].shape[1] > 0
        for ax, (column, label) in zip(axes, panels):
            if column == "mt_frac" and not has_mt_genes:
                ax.text(0.5, 0.5, "no mitochondrial gene\nin the matrix", ha="center", va="center")
                ax.set_axis_off()
                continue
            kept_values = adata.obs[column].to_numpy(dtype=float)
            removed_values = removed[column].to_numpy(dtype=float)
            bins = np.histogram_bin_edges(np.concatenate([kept_values, removed_values]), bins=HISTOGRAM_BINS)
            ax.hist(
                [kept_values, removed_values], bins=bins, stacked=True, color=["tab:blue", REMOVED_COLOUR],
                label=[f"kept ({kept_values.size})", f"removed ({removed_values.size})"],
            )
            ax.set_xlabel(label)
            ax.set_ylabel(locations.many)
        if min_counts is not None:
            axes[0].axvline(min_counts, color="black", linestyle="--", linewidth=1, label=f"--min-counts {min_counts}")
        axes[0].legend(frameon=False)
        fig.suptitle(f"{sample}: QC of the {locations.kind} (MT genes excluded from UMIs and genes)")
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)


def image_and_scale(adata, sample: str) -> tuple[np.ndarray | None, float, str]:
    """The hires image (else lowres) of ``sample`` with its scale factor; no image and scale 1 when none fits."""
    library = adata.uns.get("spatial", {}).get(sample, {})
    images = library.get("images", {})
    scalefactors = library.get("scalefactors", {})
    for key in ("hires", "lowres"):
        if key in images and f"tissue_{key}_scalef" in scalefactors:
            return np.asarray(images[key]), float(scalefactors[f"tissue_{key}_scalef"]), key
    return None, 1.0, "full resolution"


def spot_radius(xy: np.ndarray, scalefactors: dict, scale: float) -> float:
    """Spot radius in plot units: Space Ranger's spot diameter, else from the typical distance between spots."""
    if "spot_diameter_fullres" in scalefactors:
        return 0.5 * float(scalefactors["spot_diameter_fullres"]) * scale
    from scipy.spatial import cKDTree

    if len(xy) < 2:
        return 1.0
    distances, _ = cKDTree(xy).query(xy, k=2)
    # Visium spots are 55 um wide with centres 100 um apart
    return VISIUM_SPOT_DIAMETER_OVER_DISTANCE / 2 * float(np.median(distances[:, 1])) or 1.0


def umi_colour_cap(umis: np.ndarray) -> float:
    """Upper end of the UMIs-per-spot colour scale: the :data:`UMI_SCALE_QUANTILE` quantile (at least 1)."""
    return max(float(np.quantile(umis, UMI_SCALE_QUANTILE)), 1.0) if len(umis) else 1.0


def plot_qc_spatial(adata, sample: str, path: str | Path) -> None:
    """Save the UMIs per kept spot over the tissue image (hires, else lowres); removed spots outlined in red.

    Without an image (or its scale factor), spots are drawn at their full-resolution coordinates on a blank canvas.
    Visium HD bins are drawn as squares of their size, rasterised (:mod:`tissuemap.plotting.bins`).
    """
    image, scale, scale_name = image_and_scale(adata, sample)
    scalefactors = adata.uns.get("spatial", {}).get(sample, {}).get("scalefactors", {})
    xy = np.asarray(adata.obsm["spatial"], dtype=float) * scale
    removed = adata.uns.get("qc_removed_spots", pd.DataFrame(columns=["x", "y"]))
    removed_xy = removed[["x", "y"]].to_numpy(dtype=float) * scale
    bins = bin_grid(adata.obs, xy, scalefactors, scale)
    radius = bins.side / 2 if bins is not None else spot_radius(xy, scalefactors, scale)
    locations = sample_locations(adata, sample)

    fig, ax = plt.subplots(figsize=(7, 6), layout="constrained")
    try:
        if image is not None:
            ax.imshow(image)
        umis = adata.obs["total_counts"].to_numpy(dtype=float)
        cap = umi_colour_cap(umis)
        if bins is not None:
            spots = bins.show(ax, bins.raster(umis), cmap="viridis", vmin=0, vmax=cap)
        else:
            spots = PatchCollection([Circle(point, radius) for point in xy], cmap="viridis", linewidth=0)
            spots.set_array(umis)
            spots.set_clim(0, cap)
            ax.add_collection(spots)
        fig.colorbar(spots, ax=ax, shrink=0.8, extend="max" if umis.size and umis.max() > cap else "neither",
                     label=f"UMIs per {locations.one} (MT genes excluded); scale ends at the {UMI_SCALE_QUANTILE:.0%} quantile "
                           f"({cap:,.0f})")
        if len(removed_xy):
            outline = {"facecolor": "none", "edgecolor": REMOVED_COLOUR, "linewidth": 0.8}
            label = f"removed ({len(removed_xy)})"
            if bins is not None:  # removed bins filled in red: outlines would hide bins a few pixels wide
                rows, columns = bins.locate(removed_xy)
                red = np.zeros((*bins.shape, 4), dtype=np.float32)
                red[rows, columns] = plt.matplotlib.colors.to_rgba(REMOVED_COLOUR)
                bins.show(ax, red)
                handle = Patch(color=REMOVED_COLOUR, label=label)
            else:
                ax.add_collection(PatchCollection([Circle(point, radius) for point in removed_xy], **outline))
                # collections have no legend entry of their own: a lone circle stands for them
                handle = Circle((0, 0), 1, **outline, label=label)
            ax.legend(handles=[handle], loc="upper right")
        every_spot = np.vstack([xy, removed_xy])
        margin = 3 * radius
        ax.set_xlim(every_spot[:, 0].min() - margin, every_spot[:, 0].max() + margin)
        # image rows grow downwards: put the largest y at the bottom, as on the slide image
        ax.set_ylim(every_spot[:, 1].max() + margin, every_spot[:, 1].min() - margin)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"{sample}: UMIs per {locations.one}, {adata.n_obs} {locations.kind} kept ({scale_name} scale)")
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
