"""A sample's mapping as a SpatialData store (``tissuemap map --spatialdata``): ``NAME/NAME.zarr``.

Laid out as spatialdata-io's Visium reader lays out a Space Ranger folder, so that spatialdata-plot and
napari-spatialdata draw the spots over the tissue:

- images ``NAME_hires_image`` and ``NAME_lowres_image`` (those the sample has; channels c, y, x), each mapped to the
  coordinate system ``global`` by a scale of 1 / its scale factor (``tissue_hires_scalef``, ``tissue_lowres_scalef``);
- shapes ``NAME``: one circle per spot, centred at ``obsm['spatial']`` (full-resolution pixels: ``global`` is the
  identity for them), radius ``spot_diameter_fullres / 2``; without scale factors (an h5ad input without
  ``uns['spatial']``), the diameter is 0.55 x the median distance to the nearest spot (Visium: 55 µm spots 100 µm
  apart), and the log says so. Visium HD bins (scale factors with ``bin_size_um`` and ``microns_per_pixel``) are
  squares instead, polygons of their real size turned as their grid lies on the image (:func:`bin_squares`);
- table ``table``: the abundance AnnData (the obsm and obs of ``NAME.abundance.h5ad``, without ``uns['spatial']``,
  whose images are the image elements), annotating ``NAME`` through ``obs['region']`` and ``obs['spot_id']``.

The ``spatialdata`` package is an optional extra: :func:`require_spatialdata` checks for it before any step runs.
"""

from __future__ import annotations

import os

import numpy as np

from tissuemap.errors import InputError
from tissuemap.locations import BIN_SIZE_KEY
from tissuemap.log import logger

INSTALL_HINT = "pip install 'tissuemap[spatialdata]'"
COORDINATE_SYSTEM = "global"
# Visium: spots 55 µm across, 100 µm between centres
SPOT_DIAMETER_PER_SPACING = 0.55


def require_spatialdata() -> None:
    """Raise :class:`InputError` (one line, saying how to install it) unless the spatialdata package imports."""
    try:
        import spatialdata  # noqa: F401
    except ImportError:
        raise InputError(f"--spatialdata needs the spatialdata package, which is not installed: {INSTALL_HINT}") \
            from None


def spot_diameter(adata, name: str) -> float:
    """Spot diameter in full-resolution pixels: ``spot_diameter_fullres`` of the scale factors, else estimated from
    the spots' spacing."""
    scalefactors = adata.uns.get("spatial", {}).get(name, {}).get("scalefactors", {})
    if scalefactors.get("spot_diameter_fullres"):
        return float(scalefactors["spot_diameter_fullres"])
    from scipy.spatial import cKDTree

    coordinates = np.asarray(adata.obsm["spatial"], dtype=np.float64)
    if len(coordinates) < 2:
        return 1.0
    distances, _ = cKDTree(coordinates).query(coordinates, k=2)
    diameter = SPOT_DIAMETER_PER_SPACING * float(np.median(distances[:, 1]))
    logger.info("%s: no spot_diameter_fullres in the scale factors; spots drawn %.3g pixels across (%.2f x their "
                "spacing)", name, diameter, SPOT_DIAMETER_PER_SPACING)
    return diameter


def bin_squares(centres: np.ndarray, bin_size_um: float, microns_per_pixel: float, angle: float = 0.0) -> np.ndarray:
    """The corners (bins x 4 x 2, in order around the square) of square bins ``bin_size_um`` wide, centred at
    ``centres`` (full-resolution pixels, bins x 2), their sides turned by ``angle`` (radians) from the image's axes."""
    half = 0.5 * float(bin_size_um) / float(microns_per_pixel)
    along, across = np.array([np.cos(angle), np.sin(angle)]), np.array([-np.sin(angle), np.cos(angle)])
    offsets = half * np.array([-along - across, along - across, along + across, -along + across])  # 4 x 2
    return np.asarray(centres, dtype=np.float64)[:, None, :2] + offsets[None]


def hd_bin_squares(adata, name: str) -> np.ndarray | None:
    """:func:`bin_squares` of a Visium HD sample's bins, turned as their grid (``array_row``/``array_col``) lies in
    ``obsm['spatial']``; ``None`` for spots (no ``bin_size_um`` or no ``microns_per_pixel`` in the scale
    factors)."""
    from tissuemap.plotting.bins import bin_grid

    scalefactors = adata.uns.get("spatial", {}).get(name, {}).get("scalefactors", {})
    if not scalefactors.get(BIN_SIZE_KEY):
        return None
    if not scalefactors.get("microns_per_pixel"):
        logger.warning("%s: no microns_per_pixel in the scale factors; the bins are drawn as circles", name)
        return None
    centres = np.asarray(adata.obsm["spatial"], dtype=np.float64)
    grid = bin_grid(adata.obs, centres, scalefactors, 1.0)
    # the grid's column axis in pixels; a grid that cannot be fitted (a single row of bins) is taken as upright
    angle = 0.0 if grid is None else float(np.arctan2(grid.to_plot[1, 0], grid.to_plot[0, 0]))
    return bin_squares(centres, scalefactors[BIN_SIZE_KEY], scalefactors["microns_per_pixel"], angle)


def to_spatialdata(adata, name: str):
    """The SpatialData object of one sample's abundance AnnData (see the module's description)."""
    import geopandas as gpd
    import pandas as pd
    import shapely
    from shapely.geometry import Point
    from spatialdata import SpatialData
    from spatialdata.models import Image2DModel, ShapesModel, TableModel
    from spatialdata.transformations import Identity, Scale

    library = adata.uns.get("spatial", {}).get(name, {})
    scalefactors = library.get("scalefactors", {})
    images = {}
    for resolution, image in library.get("images", {}).items():
        factor = scalefactors.get(f"tissue_{resolution}_scalef")
        if not factor:
            logger.warning("%s: no tissue_%s_scalef in the scale factors; the %s image is left out of the .zarr",
                           name, resolution, resolution)
            continue
        pixels = np.asarray(image)
        pixels = pixels[..., None] if pixels.ndim == 2 else pixels
        images[f"{name}_{resolution}_image"] = Image2DModel.parse(
            np.ascontiguousarray(np.moveaxis(pixels, -1, 0)), dims=("c", "y", "x"),
            transformations={COORDINATE_SYSTEM: Scale([1 / factor, 1 / factor], axes=("y", "x"))},
        )

    spot_ids = np.arange(adata.n_obs)
    squares = hd_bin_squares(adata, name)
    if squares is None:
        coordinates = np.asarray(adata.obsm["spatial"], dtype=np.float64)
        geometry = gpd.GeoDataFrame(
            {"radius": np.full(adata.n_obs, spot_diameter(adata, name) / 2)},
            geometry=[Point(x, y) for x, y in coordinates[:, :2]],
            index=pd.Index(spot_ids, name="spot_id"),
        )
    else:
        geometry = gpd.GeoDataFrame(geometry=shapely.polygons(squares), index=pd.Index(spot_ids, name="spot_id"))
    shapes = ShapesModel.parse(geometry, transformations={COORDINATE_SYSTEM: Identity()})

    table = adata.copy()
    table.uns.pop("spatial", None)
    table.obs["region"] = pd.Categorical([name] * table.n_obs)
    table.obs["spot_id"] = spot_ids
    table = TableModel.parse(table, region=name, region_key="region", instance_key="spot_id")
    return SpatialData(images=images, shapes={name: shapes}, tables={"table": table})


def write_spatialdata(adata, name: str, path: str | os.PathLike) -> None:
    """Write :func:`to_spatialdata` of ``adata`` to the ``.zarr`` folder ``path`` (which must not exist)."""
    to_spatialdata(adata, name).write(path)
