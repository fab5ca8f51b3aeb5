"""A sample's mapping as a SpatialData store (``tissuemap map --spatialdata``): ``NAME/NAME.zarr``.

Laid out as spatialdata-io's Visium reader lays out a Space Ranger folder, so that spatialdata-plot and
napari-spatialdata draw the spots over the tissue:

- images ``NAME_hires_image`` and ``NAME_lowres_image`` (those the sample has; channels c, y, x), each mapped to the
  coordinate system ``global`` by a scale of 1 / its scale factor (``tissue_hires_scalef``, ``tissue_lowres_scalef``);
- shapes ``NAME``: one circle per spot, centred at ``obsm['spatial']`` (full-resolution pixels: ``global`` is the
  identity for them), radius ``spot_diameter_fullres / 2``; without scale factors (an h5ad input without
  ``uns['spatial']``), the diameter is 0.55 x the median distance to the nearest spot (Visium: 55 µm spots 100 µm
  apart), and the log says so;
- table ``table``: the abundance AnnData (the obsm and obs of ``NAME.abundance.h5ad``, without ``uns['spatial']``,
  whose images are the image elements), annotating ``NAME`` through ``obs['region']`` and ``obs['spot_id']``.

The ``spatialdata`` package is an optional extra: :func:`require_spatialdata` checks for it before any step runs.
"""

from __future__ import annotations

import os

import numpy as np

from tissuemap.errors import InputError
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


def to_spatialdata(adata, name: str):
    """The SpatialData object of one sample's abundance AnnData (see the module's description)."""
    import geopandas as gpd
    import pandas as pd
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

    coordinates = np.asarray(adata.obsm["spatial"], dtype=np.float64)
    spot_ids = np.arange(adata.n_obs)
    circles = gpd.GeoDataFrame(
        {"radius": np.full(adata.n_obs, spot_diameter(adata, name) / 2)},
        geometry=[Point(x, y) for x, y in coordinates[:, :2]],
        index=pd.Index(spot_ids, name="spot_id"),
    )
    shapes = ShapesModel.parse(circles, transformations={COORDINATE_SYSTEM: Identity()})

    table = adata.copy()
    table.uns.pop("spatial", None)
    table.obs["region"] = pd.Categorical([name] * table.n_obs)
    table.obs["spot_id"] = spot_ids
    table = TableModel.parse(table, region=name, region_key="region", instance_key="spot_id")
    return SpatialData(images=images, shapes={name: shapes}, tables={"table": table})


def write_spatialdata(adata, name: str, path: str | os.PathLike) -> None:
    """Write :func:`to_spatialdata` of ``adata`` to the ``.zarr`` folder ``path`` (which must not exist)."""
    to_spatialdata(adata, name).write(path)
