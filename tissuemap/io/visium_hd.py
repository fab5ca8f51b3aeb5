"""Find the bins to read in a Visium HD Space Ranger ``outs/`` folder (Space Ranger 3.x and later).

A Visium HD ``outs/`` holds ``binned_outputs/square_002um``, ``square_008um`` and ``square_016um``: each a standard
Visium layout of its own (``filtered_feature_bc_matrix.h5``, ``spatial/tissue_positions.parquet``,
``spatial/scalefactors_json.json`` with ``bin_size_um`` and ``microns_per_pixel``, and the tissue images), its bins
named ``s_008um_RRRRR_CCCCC-1`` with ``array_row``/``array_col`` their place on the square grid. The bin folder is
then read like a standard Visium sample (:func:`tissuemap.io.visium.read_spaceranger`).
"""

from __future__ import annotations

from pathlib import Path

from tissuemap.defaults import DEFAULT_BIN_SIZE
from tissuemap.errors import InputError
from tissuemap.samplesheet import BIN_SIZES

BINNED_FOLDER = "binned_outputs"
HD_POSITIONS_FILE = "tissue_positions.parquet"


def bin_folder_name(bin_size: int) -> str:
    """``square_008um`` for 8, as Space Ranger names the folder of each bin size."""
    return f"square_{bin_size:03d}um"


def is_visium_hd(outs_dir: Path) -> bool:
    """Whether ``outs_dir`` is a Visium HD ``outs/`` folder (it has ``binned_outputs/``)."""
    return (outs_dir / BINNED_FOLDER).is_dir()


def check_bin_size(bin_size: int, where: str = "--bin-size") -> int:
    """``bin_size`` if it is one of :data:`BIN_SIZES`, else :class:`InputError` naming ``where``."""
    if bin_size not in BIN_SIZES:
        raise InputError(
            f"{where}: {bin_size} is not a Visium HD bin size; use one of {', '.join(map(str, BIN_SIZES))} (micrometres)"
        )
    return bin_size


def hd_bin_folder(outs_dir: Path, bin_size: int | None) -> Path:
    """The ``binned_outputs/square_NNNum`` folder of ``bin_size`` (default :data:`DEFAULT_BIN_SIZE`), checked to
    hold a matrix and the parquet positions; :class:`InputError` naming the missing folder or file otherwise."""
    from tissuemap.io.visium import MATRIX_FILES

    bin_size = check_bin_size(DEFAULT_BIN_SIZE if bin_size is None else bin_size)
    folder = outs_dir / BINNED_FOLDER / bin_folder_name(bin_size)
    if not folder.is_dir():
        present = sorted(path.name for path in (outs_dir / BINNED_FOLDER).glob("square_*um") if path.is_dir())
        raise InputError(
            f"{folder}: not found (bin size {bin_size} um; this folder has {', '.join(present) or 'no bin folder'}); "
            "choose a bin size that is there (samplesheet column bin_size, or --bin-size) or copy the whole "
            f"{BINNED_FOLDER}/ folder of the Space Ranger run"
        )
    if not any((folder / name).is_file() for name in MATRIX_FILES):
        raise InputError(
            f"{folder}: no {' or '.join(MATRIX_FILES)}; copy the whole {bin_folder_name(bin_size)}/ folder of the "
            "Space Ranger run"
        )
    positions = folder / "spatial" / HD_POSITIONS_FILE
    if not positions.is_file():
        raise InputError(
            f"{positions}: not found (Visium HD bin positions); copy the whole {bin_folder_name(bin_size)}/spatial/ "
            "folder of the Space Ranger run"
        )
    return folder
