"""The reports' own figures, drawn from the mapping results; each function returns the figure as PNG bytes.

Spots are drawn to scale over the sample's tissue image (hires, else lowres), as in ``NAME.qc_spatial.png``; Visium
HD bins as squares of their size, rasterised (:mod:`tissuemap.plotting.bins`), so that a map of 500,000 bins is drawn
in seconds and weighs what a map of spots does.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.collections import EllipseCollection
from matplotlib.patches import Patch

from tissuemap.locations import SPOTS, Locations, sample_locations
from tissuemap.plotting.bins import BinGrid, bin_grid
from tissuemap.plotting.qc import UMI_SCALE_QUANTILE, image_and_scale, spot_radius, umi_colour_cap

# Each abundance map's colour scale ends at this quantile of its values, as in the cell2location tutorial
# (vmax='p99.2'), so that a few extreme spots do not wash out the rest of the tissue.
COLOUR_SCALE_QUANTILE = 0.992
PANEL_INCHES = 4.6
# Small multiples fill rows of about this width: 3 panels of a square tissue per row, so that spots stay visible.
FIGURE_WIDTH_INCHES = 18
# A panel's colour bar adds about this share to its width.
COLOUR_BAR_SHARE = 0.25
DPI = 80
ABUNDANCE_COLOURMAP = "magma"
# The tissue image is drawn in grey and faded, so that no colour of the maps is lost on the stain's pinks and lilacs.
IMAGE_ALPHA = 0.5
# Qualitative colours for the dominant cell type, 38 before they repeat: saturated, mid-dark shades first (tab10,
# Dark2, Set1, without their greys, which vanish on the grey tissue); each spot also gets a dark edge.
_GREYS = {"#7f7f7f", "#666666", "#999999", "#636363"}
CATEGORY_COLOURS = [
    colour
    for name, step in (("tab10", 1), ("Dark2", 1), ("Set1", 1), ("tab20b", 2), ("tab20c", 4))
    for colour in plt.get_cmap(name).colors[::step]
    if plt.matplotlib.colors.to_hex(colour) not in _GREYS
]
SPOT_EDGE = {"edgecolors": "#1d2330", "linewidths": 0.4}
# The overlay map (cell2location's plot_spatial): this many most abundant types, each in one of these colours.
OVERLAY_TYPES = 6
OVERLAY_COLOURS = ["#ff2a2a", "#3d7dff", "#2bd14f", "#ff9d00", "#c04dff", "#00e0f0"]
OVERLAY_SHARPNESS = 4
# On the overlay's dark background the tissue is fainter still.
OVERLAY_IMAGE_ALPHA = 0.35


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
    bins
        For Visium HD bins, their grid (the maps are then rasters); ``None`` for spots.
    locations
        What the figures' texts call them (:mod:`tissuemap.locations`).
    """

    xy: np.ndarray
    radius: float
    image: np.ndarray | None
    xlim: tuple[float, float]
    ylim: tuple[float, float]
    bins: BinGrid | None = None
    locations: Locations = SPOTS

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
    bins = bin_grid(adata.obs, xy, scalefactors, scale)
    radius = bins.side / 2 if bins is not None else spot_radius(xy, scalefactors, scale)
    margin = 3 * radius
    return TissueView(
        xy=xy,
        radius=radius,
        image=image,
        xlim=(xy[:, 0].min() - margin, xy[:, 0].max() + margin),
        ylim=(xy[:, 1].max() + margin, xy[:, 1].min() - margin),
        bins=bins,
        locations=sample_locations(adata, library_id),
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


def _grey(image: np.ndarray) -> np.ndarray:
    """The luminance of an RGB(A) image (values as stored: 0-1 floats or 0-255 integers), as floats in 0-1."""
    image = np.asarray(image)
    scale = 255.0 if np.issubdtype(image.dtype, np.integer) else 1.0
    if image.ndim == 2:
        return image / scale
    return (image[..., :3] @ np.array([0.299, 0.587, 0.114])) / scale


def _draw_tissue(ax, view: TissueView, alpha: float = IMAGE_ALPHA) -> None:
    if view.image is not None:
        ax.imshow(_grey(view.image), cmap="gray", vmin=0, vmax=1, alpha=alpha)
    ax.set_xlim(view.xlim)
    ax.set_ylim(view.ylim)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])


def _spots(ax, view: TissueView, **style) -> EllipseCollection:
    """Every spot as a circle of its true size (data units), added to ``ax``."""
    diameters = np.full(len(view.xy), 2 * view.radius)
    style = {"linewidths": 0, **style}
    spots = EllipseCollection(diameters, diameters, np.zeros(len(view.xy)), units="xy", offsets=view.xy,
                              offset_transform=ax.transData, **style)
    ax.add_collection(spots)
    return spots


def _value_map(ax, view: TissueView, values: np.ndarray, cmap: str, low: float, high: float):
    """Every spot (or bin) coloured by its value on ``cmap`` from ``low`` to ``high``; returns what a colour bar
    needs."""
    if view.bins is not None:
        return view.bins.show(ax, view.bins.raster(values), cmap=cmap, vmin=low, vmax=high)
    spots = _spots(ax, view, cmap=cmap)
    spots.set_array(values)
    spots.set_clim(low, high)
    return spots


def _colour_map(ax, view: TissueView, colours: np.ndarray, **edge) -> None:
    """Every spot in its RGB(A) colour (spots x 3 or 4), with ``edge`` around spots; bins fill their squares."""
    if view.bins is not None:
        colours = np.asarray(colours, dtype=float)
        if colours.shape[1] == 3:
            colours = np.column_stack([colours, np.ones(len(colours))])
        view.bins.show(ax, view.bins.raster(colours))
    else:
        _spots(ax, view, facecolors=colours, **edge)


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
        spots = _value_map(ax, view, values, ABUNDANCE_COLOURMAP, 0, colour_scale_limit(values))
        fig.colorbar(spots, ax=ax, shrink=0.8).ax.tick_params(labelsize="large")
        ax.set_title(_plain(cell_type), fontsize="x-large")
    for ax in axes.flat[n_types:]:
        ax.set_axis_off()
    return _png(fig)


def category_colours(categories) -> dict[str, tuple]:
    """A colour per category, in order (the palette repeats after its 38 colours)."""
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
    _colour_map(ax, view, np.array([colours[name] for name in dominant]), **SPOT_EDGE)
    handles = [Patch(color=colours[name], label=_plain(f"{name} ({counts[name]})")) for name in present]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False, fontsize="small",
              title=f"dominant type ({view.locations.many})", ncols=1 + len(handles) // 25)
    return _png(fig)


def overlay_types(abundance: pd.DataFrame, n: int = OVERLAY_TYPES) -> list[str]:
    """The ``n`` cell types with the most cells in all spots, most first."""
    return abundance.sum().nlargest(n).index.tolist()


def overlay_map(abundance: pd.DataFrame, view: TissueView, cell_types: list[str]) -> bytes:
    """Several cell types on one map, as cell2location's ``plot_spatial``: each type in its colour, the colour's
    intensity its abundance (0 up to its :data:`COLOUR_SCALE_QUANTILE` quantile), blended over the tissue.

    A spot's colour is the mean of its types' colours weighted by their intensities raised to the power
    :data:`OVERLAY_SHARPNESS` (so that the leading type's colour shows rather than a grey mix of all six), and its
    opacity the largest intensity: a spot where one type stands out shows that type's colour, a spot shared by two
    a mix of theirs, and an empty spot the tissue.

    Parameters
    ----------
    abundance
        Spots × cell types, rows in the order of ``view.xy``.
    view
        Where the spots lie (:func:`tissue_view`).
    cell_types
        The types to show (at most ``len(OVERLAY_COLOURS)``), e.g. :func:`overlay_types`.
    """
    colours = np.array([plt.matplotlib.colors.to_rgb(colour) for colour in OVERLAY_COLOURS[: len(cell_types)]])
    intensity = np.column_stack([
        np.clip(abundance[name].to_numpy(dtype=float) / colour_scale_limit(abundance[name]), 0, 1)
        for name in cell_types
    ])
    weights = intensity ** OVERLAY_SHARPNESS
    weights /= np.maximum(weights.sum(axis=1, keepdims=True), 1e-12)
    rgba = np.column_stack([weights @ colours, intensity.max(axis=1)])
    width, height = view.panel_size(7)
    # on a dark background, as the package draws it: the colours' intensities read as brightness
    with plt.style.context("dark_background"):
        fig, ax = plt.subplots(figsize=(width + 3.2, height), layout="constrained")
        _draw_tissue(ax, view, OVERLAY_IMAGE_ALPHA)
        _colour_map(ax, view, rgba)
        handles = [Patch(color=colour, label=_plain(name)) for name, colour in zip(cell_types, colours)]
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False, fontsize="medium",
                  title=f"cell type (colour intensity:\nits cells per {view.locations.one})")
        return _png(fig)


def spot_qc_maps(adata, view: TissueView) -> bytes:
    """Three maps of the slide, as cell2location's ``plot_spatial_QC_across_batches``: UMIs per spot, total
    estimated cells (``obs['total_cell_abundance']``) and detection sensitivity (``obs['detection_sensitivity']``,
    the posterior mean of y_s)."""
    umis = np.asarray(adata.X.sum(axis=1), dtype=float).ravel()
    cells = adata.obs["total_cell_abundance"].to_numpy(dtype=float)
    detection = adata.obs["detection_sensitivity"].to_numpy(dtype=float)
    panels = [
        (umis, f"UMIs per {view.locations.one}\n(scale: 0 to {UMI_SCALE_QUANTILE:.0%} quantile)", (0.0, umi_colour_cap(umis))),
        (cells, f"total cells per {view.locations.one}\n(scale: 0 to 99.2% quantile)", (0.0, colour_scale_limit(cells))),
        # detection varies around its slide's mean: the scale spans its spots' range, not from 0
        (detection, "detection sensitivity y_s\n(scale: 0.8% to 99.2% quantile)",
         tuple(np.quantile(detection, [1 - COLOUR_SCALE_QUANTILE, COLOUR_SCALE_QUANTILE]))),
    ]
    width, height = view.panel_size(PANEL_INCHES)
    # wide enough for the titles, however narrow the tissue
    panel_width = max(width * (1 + COLOUR_BAR_SHARE), 0.8 * PANEL_INCHES * (1 + COLOUR_BAR_SHARE))
    fig, axes = plt.subplots(1, 3, figsize=(3 * panel_width, height + 0.6), squeeze=False, layout="constrained")
    for ax, (values, title, (low, high)) in zip(axes.flat, panels):
        _draw_tissue(ax, view)
        spots = _value_map(ax, view, values, "viridis", low, high if high > low else low + 1)
        extend = {(False, False): "neither", (True, False): "min", (False, True): "max", (True, True): "both"}
        colour_bar = fig.colorbar(spots, ax=ax, shrink=0.8,
                                  extend=extend[bool(values.min() < low), bool(values.max() > high)])
        colour_bar.ax.tick_params(labelsize="large")
        ax.set_title(title, fontsize="large")
    return _png(fig)


def proportion_bars(proportions: pd.DataFrame, locations: Locations) -> bytes:
    """Per cell type, its mean proportion over spots (bar) and the middle half of its spots (line), largest first.

    Parameters
    ----------
    proportions
        Spots × cell types, rows summing to 1.
    locations
        What the labels call the rows (:mod:`tissuemap.locations`).
    """
    means = proportions.mean().sort_values()
    rows = np.arange(len(means))
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.3 * len(means)), layout="constrained")
    ax.barh(rows, means.to_numpy(), color="tab:blue", label=f"mean over {locations.many}")
    ax.hlines(rows, proportions[means.index].quantile(0.25), proportions[means.index].quantile(0.75),
              color="black", linewidth=2, label=f"25%–75% of {locations.many}")
    ax.set_yticks(rows, [_plain(name) for name in means.index])
    ax.set_xlabel(f"proportion of the {locations.one}'s cells (q05 abundance normalised per {locations.one})")
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
