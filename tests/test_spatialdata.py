"""`tissuemap map --spatialdata`: NAME/NAME.zarr read back with spatialdata holds the abundance table, the H&E images
and the spots as circles that sit on the spots of the image; without the package the option fails before training."""

import sys

import anndata as ad
import numpy as np
import pytest
from click.testing import CliRunner

from tissuemap.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def map_command(qc_samples, outdir) -> list[str]:
    return ["map", "--spatial", str(qc_samples / "sample1.qc.h5ad"), "--signatures", str(qc_samples / "signatures.csv"),
            "--n-cells-per-location", "8", "--max-epochs", "3", "--min-shared-genes", "10", "--device", "cpu",
            "--spatialdata", "--outdir", str(outdir)]


def test_without_the_package_the_option_says_how_to_install_it(qc_samples, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "spatialdata", None)  # import spatialdata now raises ImportError
    result = CliRunner().invoke(main, map_command(qc_samples, tmp_path / "out"))
    assert result.exit_code != 0
    assert "pip install 'tissuemap[spatialdata]'" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()  # checked before anything is written


def test_spatialdata_store_reads_back_aligned(qc_samples, tmp_path):
    spatialdata = pytest.importorskip("spatialdata")
    from spatialdata.transformations import get_transformation

    result = CliRunner().invoke(main, map_command(qc_samples, tmp_path))
    assert result.exit_code == 0, result.output
    abundance = ad.read_h5ad(tmp_path / "sample1" / "sample1.abundance.h5ad")
    qc = ad.read_h5ad(qc_samples / "sample1.qc.h5ad")
    library = qc.uns["spatial"]["sample1"]
    sdata = spatialdata.read_zarr(tmp_path / "sample1" / "sample1.zarr")

    # the table: the abundance AnnData's obsm and obs, annotating the circles
    table = sdata.tables["table"]
    assert list(table.obs_names) == list(abundance.obs_names)
    assert set(abundance.obsm) <= set(table.obsm)
    np.testing.assert_allclose(table.obsm["q05_cell_abundance_w_sf"].to_numpy(),
                               abundance.obsm["q05_cell_abundance_w_sf"].to_numpy())
    assert set(abundance.obs.columns) <= set(table.obs.columns)
    attrs = table.uns["spatialdata_attrs"]
    assert attrs["region"] == "sample1" and attrs["region_key"] == "region" and attrs["instance_key"] == "spot_id"

    # the spots: circles of the real diameter at obsm['spatial'], identity to 'global' (full-resolution pixels)
    circles = sdata.shapes["sample1"]
    assert list(circles.index) == list(table.obs["spot_id"])
    np.testing.assert_allclose(circles["radius"], library["scalefactors"]["spot_diameter_fullres"] / 2)
    centres = np.column_stack([circles.geometry.x, circles.geometry.y])
    to_global = get_transformation(circles, "global").to_affine_matrix(("x", "y"), ("x", "y"))
    np.testing.assert_allclose((to_global @ np.c_[centres, np.ones(len(centres))].T)[:2].T, abundance.obsm["spatial"])

    # the images, with their scale factors: a spot's full-resolution centre lands on its pixel of each image
    for resolution in ("hires", "lowres"):
        image = sdata.images[f"sample1_{resolution}_image"]
        pixels = np.moveaxis(np.asarray(image), 0, -1)
        np.testing.assert_array_equal(pixels, library["images"][resolution])
        to_global = get_transformation(image, "global").to_affine_matrix(("x", "y"), ("x", "y"))
        to_image = np.linalg.inv(to_global) @ np.c_[abundance.obsm["spatial"], np.ones(abundance.n_obs)].T
        factor = library["scalefactors"][f"tissue_{resolution}_scalef"]
        np.testing.assert_allclose(to_image[:2].T, abundance.obsm["spatial"] * factor)
