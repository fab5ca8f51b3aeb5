"""The reports' own figures, drawn from the mapping results; each function returns the figure as PNG bytes.

Spots are drawn to scale over the sample's tissue image (hires, else lowres), as in ``NAME.qc_spatial.png``.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.collections import EllipseCollection
from matplotlib.patches import Patch

from tissuemap.plotting.qc import image_and_scale, spot_radius

# Each abundance map's colour scale ends at this quantile of its values, as in the cell2location tutorial
# (vmax='p99.2'), so that a few extreme spots do not wash out the rest of the tissue.
COLOUR_SCALE_QUANTILE = 0.992
PANEL_INCHES = 3.3
# Small multiples fill rows of about this width: more panels per row for tall, narrow tissue.
FIGURE_WIDTH_INCHES = 13
# A panel's colour bar adds about this share to its width.
COLOUR_BAR_SHARE = 0.25
DPI = 80
ABUNDANCE_COLOURMAP = "magma"
# The tissue image is faded so that the spots' colours stand out from the stain's.
IMAGE_ALPHA = 0.6
# Qualitative colours for the dominant cell type, 60 before they repeat: tab20's dark shades first, then its light
# ones, so that neighbouring types do not get two shades of one hue.
_TAB20 = plt.get_cmap("tab20").colors
CATEGORY_COLOURS = [*_TAB20[0::2], *_TAB20[1::2], *plt.get_cmap("tab20b").colors, *plt.get_cmap("tab20c").colors]


@dataclass(frozen=True)
class TissueView:
    """The spots of one sample in the coordinates of its tissue image.

    Attributes
    ----------
    xy
        Spot centres (spots × 2) in image pixels (or full-resolution units without an image).
    radius
        Spot radius in the same units.
    image
        The tissue image, or ``None``.
    xlim, ylim
        Axis limits framing the spots (y decreasing downwards, as on the slide image).
    """

    xy: np.ndarray
    radius: float
    image: np.ndarray | None
    xlim: tuple[float, float]
    ylim: tuple[float, float]

    @property
    def aspect(self) -> float:
        """Height over width of the framed tissue."""
        return (self.ylim[0] - self.ylim[1]) / (self.xlim[1] - self.xlim[0])

    def panel_size(self, size: float) -> tuple[float, float]:
        """(width, height) in inches of a panel showing the tissue within a ``size`` square (at least half filled)."""
        aspect = min(max(self.aspect, 0.5), 2.0)
        return (size, size * aspect) if aspect <= 1 else (size / aspect, size)


def tissue_view(adata, library_id: str) -> TissueView:
    """The :class:`TissueView` of ``adata``'s spots (``obsm['spatial']``, ``uns['spatial'][library_id]``)."""
    image, scale, _ = image_and_scale(adata, library_id)
    scalefactors = adata.uns.get("spatial", {}).get(library_id, {}).get("scalefactors", {})
    xy = np.asarray(adata.obsm["spatial"], dtype=float) * scale
    radius = spot_radius(xy, scalefactors, scale)
    margin = 3 * radius
    return TissueView(
        xy=xy,
        radius=radius,
        image=image,
        xlim=(xy[:, 0].min() - margin, xy[:, 0].max() + margin),
        ylim=(xy[:, 1].max() + margin, xy[:, 1].min() - margin),
    )


def _plain(text: str) -> str:
    """``text`` for a matplotlib label: a ``$`` would otherwise start mathtext (and fail on an odd cell-type name)."""
    return str(text).replace("$", r"\$")


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=DPI)
    finally:
        plt.close(fig)
    return buffer.getvalue()


def _draw_tissue(ax, view: TissueView) -> None:
    if view.image is not None:
        ax.imshow(view.image, alpha=IMAGE_ALPHA)
    ax.set_xlim(view.xlim)
    ax.set_ylim(view.ylim)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])


def _spots(ax, view: TissueView, **style) -> EllipseCollection:
    """Every spot as a circle of its true size (data units), added to ``ax``."""
    diameters = np.full(len(view.xy), 2 * view.radius)
    spots = EllipseCollection(diameters, diameters, np.zeros(len(view.xy)), units="xy", offsets=view.xy,
                              offset_transform=ax.transData, linewidth=0, **style)
    ax.add_collection(spots)
    return spots


def colour_scale_limit(values) -> float:
    """Upper end of an abundance map's colour scale: the ``COLOUR_SCALE_QUANTILE`` quantile of ``values``.

    Falls back to the maximum, then to 1, when the quantile is 0 (a type absent from nearly every spot).
    """
    values = np.asarray(values, dtype=float)
    limit = float(np.quantile(values, COLOUR_SCALE_QUANTILE)) if values.size else 0.0
    if limit <= 0:
        limit = float(values.max(initial=0.0))
    return limit if limit > 0 else 1.0


def abundance_maps(abundance: pd.DataFrame, view: TissueView) -> bytes:
    """Small multiples: the cells of each type per spot over the tissue, one panel per column of ``abundance``.

    Parameters
    ----------
    abundance
        Spots × cell types (e.g. the q05 cell abundance), rows in the order of ``view.xy``.
    view
        Where the spots lie (:func:`tissue_view`).
    """
    n_types = abundance.shape[1]
    width, height = view.panel_size(PANEL_INCHES)
    width *= 1 + COLOUR_BAR_SHARE
    n_columns = max(1, min(n_types, int(FIGURE_WIDTH_INCHES // width)))
    n_rows = -(-n_types // n_columns)
    fig, axes = plt.subplots(n_rows, n_columns, figsize=(width * n_columns, height * n_rows),
                             squeeze=False, layout="constrained")
    for ax, cell_type in zip(axes.flat, abundance.columns):
        values = abundance[cell_type].to_numpy(dtype=float)
        _draw_tissue(ax, view)
        spots = _spots(ax, view, cmap=ABUNDANCE_COLOURMAP)
        spots.set_array(values)
        spots.set_clim(0, colour_scale_limit(values))
        fig.colorbar(spots, ax=ax, shrink=0.8)
        ax.set_title(_plain(cell_type), fontsize="medium")
    for ax in axes.flat[n_types:]:
        ax.set_axis_off()
    return _png(fig)


def category_colours(categories) -> dict[str, tuple]:
    """A colour per category, in order (the palette repeats after 60 categories)."""
    return {name: CATEGORY_COLOURS[index % len(CATEGORY_COLOURS)] for index, name in enumerate(categories)}


def dominant_type_map(dominant: pd.Series, cell_types, view: TissueView) -> bytes:
    """Each spot coloured by its dominant cell type; the legend lists the types that dominate some spot.

    Parameters
    ----------
    dominant
        Per spot (in the order of ``view.xy``), the name of its most abundant cell type.
    cell_types
        All cell types, in the order that fixes their colours.
    view
        Where the spots lie (:func:`tissue_view`).
    """
    colours = category_colours(cell_types)
    counts = dominant.value_counts()
    present = [name for name in cell_types if counts.get(name, 0) > 0]
    width, height = view.panel_size(6)
    legend_width = 2.5 * (1 + len(present) // 25)
    fig, ax = plt.subplots(figsize=(width + legend_width, height), layout="constrained")
    _draw_tissue(ax, view)
    _spots(ax, view, facecolors=[colours[name] for name in dominant])
    handles = [Patch(color=colours[name], label=_plain(f"{name} ({counts[name]})")) for name in present]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False, fontsize="small",
              title="dominant type (spots)", ncols=1 + len(handles) // 25)
    return _png(fig)


def proportion_bars(proportions: pd.DataFrame) -> bytes:
    """Per cell type, its mean proportion over spots (bar) and the middle half of its spots (line), largest first.

    Parameters
    ----------
    proportions
        Spots × cell types, rows summing to 1.
    """
    means = proportions.mean().sort_values()
    rows = np.arange(len(means))
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.3 * len(means)), layout="constrained")
    ax.barh(rows, means.to_numpy(), color="tab:blue", label="mean over spots")
    ax.hlines(rows, proportions[means.index].quantile(0.25), proportions[means.index].quantile(0.75),
              color="black", linewidth=2, label="25%–75% of spots")
    ax.set_yticks(rows, [_plain(name) for name in means.index])
    ax.set_xlabel("proportion of the spot's cells (q05 abundance normalised per spot)")
    ax.set_xlim(0, None)
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncols=2, frameon=False)
    return _png(fig)


def proportion_heatmap(mean_proportions: pd.DataFrame) -> bytes:
    """Heat map of the mean proportion of every cell type (columns) in every sample (rows)."""
    n_samples, n_types = mean_proportions.shape
    fig, ax = plt.subplots(figsize=(2.5 + 0.45 * n_types, 1.8 + 0.4 * n_samples), layout="constrained")
    image = ax.imshow(mean_proportions.to_numpy(dtype=float), cmap="viridis", aspect="auto", vmin=0)
    ax.set_xticks(range(n_types), [_plain(name) for name in mean_proportions.columns], rotation=90)
    ax.set_yticks(range(n_samples), [_plain(name) for name in mean_proportions.index])
    fig.colorbar(image, ax=ax, label="mean proportion")
    return _png(fig)
