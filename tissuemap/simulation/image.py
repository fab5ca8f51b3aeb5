"""The sample's pictures: full-resolution pixel coordinates of every spot, Space Ranger's scale factors, and
synthetic high- and low-resolution H&E-like images in which each zone has its own stain colour.

Space Ranger writes both images; ``scanpy.read_visium`` needs both.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from tissuemap.simulation.layout import SPOT_SPACING_UM, TissueSection

SPOT_DIAMETER_UM = 55.0
FIDUCIAL_DIAMETER_UM = 88.85  # the fiducial frame's dots, as in Space Ranger's scale factors
PIXELS_PER_UM = 89.47 / SPOT_DIAMETER_UM  # a typical Visium full-resolution microscope image
MARGIN_UM = 800.0  # image beyond the capture area (fiducial frame and glass)
LOWRES_SIZE, HIRES_SIZE = 600, 2000  # longest side of Space Ranger's low- and high-resolution images
BACKGROUND = np.array([242, 240, 238])  # glass
ZONE_COLOURS = np.array(  # eosin pinks to haematoxylin purples
    [[222, 150, 185], [150, 100, 175], [235, 185, 210], [185, 110, 150], [120, 75, 140], [210, 130, 160],
     [170, 140, 200], [240, 160, 170]]
)  # fmt: skip


@dataclass
class SlideImage:
    """Where the capture area lies in the sample's full-resolution image: ``offset`` (row, column pixels of the
    area's origin) and ``shape`` (rows, columns of the full-resolution image)."""

    offset: np.ndarray
    shape: tuple[int, int]

    def pixels(self, area: pd.DataFrame) -> pd.DataFrame:
        """``pxl_row_in_fullres`` and ``pxl_col_in_fullres`` (integers, as Space Ranger writes them) of positions."""
        return pd.DataFrame(
            {
                "pxl_row_in_fullres": np.rint(self.offset[0] + area["y_um"].to_numpy() * PIXELS_PER_UM).astype(int),
                "pxl_col_in_fullres": np.rint(self.offset[1] + area["x_um"].to_numpy() * PIXELS_PER_UM).astype(int),
            },
            index=area.index,
        )

    def scalefactors(self) -> dict[str, float]:
        """Space Ranger's ``scalefactors_json.json`` content."""
        longest = max(self.shape)
        return {
            "tissue_hires_scalef": HIRES_SIZE / longest,
            "tissue_lowres_scalef": LOWRES_SIZE / longest,
            "fiducial_diameter_fullres": FIDUCIAL_DIAMETER_UM * PIXELS_PER_UM,
            "spot_diameter_fullres": SPOT_DIAMETER_UM * PIXELS_PER_UM,
        }


def slide_image(area: pd.DataFrame, rng: np.random.Generator) -> SlideImage:
    """A full-resolution frame around the capture area, the area shifted a little at random (each sample's
    microscope image is framed differently)."""
    extent_um = area[["y_um", "x_um"]].to_numpy().max(axis=0)
    shape = tuple(int(v) for v in np.ceil((extent_um + 2 * MARGIN_UM) * PIXELS_PER_UM))
    offset = MARGIN_UM * PIXELS_PER_UM * rng.uniform(0.6, 1.4, 2)
    return SlideImage(offset=offset, shape=shape)


def tissue_picture(section: TissueSection, total_cells: np.ndarray, image: SlideImage, longest_side: int,
                   reach_um: float = 0.6 * SPOT_SPACING_UM) -> np.ndarray:
    """A picture of the slide (rows x columns x RGB, uint8) with ``longest_side`` pixels: glass, and tissue within
    ``reach_um`` of a tissue spot in that spot's zone colour, darker where the spot holds more cells (denser nuclei).
    The default reach covers Visium's grid: a hexagonal cell's corners are 0.58 spacings from its centre."""
    from scipy.spatial import cKDTree

    scale = longest_side / max(image.shape)
    n_rows, n_columns = (int(round(side * scale)) for side in image.shape)
    spot_um = section.spots[["x_um", "y_um"]].to_numpy()
    low_um, high_um = spot_um.min(axis=0) - reach_um, spot_um.max(axis=0) + reach_um
    # only pixels in the tissue's bounding box can be tissue
    rows = _pixel_span(low_um[1], high_um[1], image.offset[0], scale, n_rows)
    columns = _pixel_span(low_um[0], high_um[0], image.offset[1], scale, n_columns)
    pixel_rows, pixel_columns = np.mgrid[rows, columns]
    # picture pixel centre -> full resolution -> micrometres on the capture area
    y_um = ((pixel_rows.ravel() + 0.5) / scale - image.offset[0]) / PIXELS_PER_UM
    x_um = ((pixel_columns.ravel() + 0.5) / scale - image.offset[1]) / PIXELS_PER_UM
    distance, nearest = cKDTree(spot_um).query(np.column_stack([x_um, y_um]), distance_upper_bound=reach_um)
    in_tissue = np.isfinite(distance)

    zone = section.spots["zone"].cat.codes.to_numpy()
    shade = np.clip(1.15 - 0.3 * total_cells / max(total_cells.mean(), 1e-9), 0.6, 1.15)
    spot_colour = np.clip(ZONE_COLOURS[zone % len(ZONE_COLOURS)] * shade[:, None], 0, 255).astype(np.uint8)
    picture = np.tile(BACKGROUND.astype(np.uint8), (n_rows, n_columns, 1))
    tissue_box = picture[rows, columns]  # a view: filling it paints the picture
    tissue_box[in_tissue.reshape(tissue_box.shape[:2])] = spot_colour[nearest[in_tissue]]
    return picture


def _pixel_span(low_um: float, high_um: float, offset: float, scale: float, size: int) -> slice:
    """Picture pixels (within ``0..size``) covering ``low_um..high_um`` of the capture area along one axis."""
    first, last = ((offset + um * PIXELS_PER_UM) * scale for um in (low_um, high_um))
    return slice(max(int(first), 0), min(int(last) + 1, size))
