"""Visium HD input: the binned_outputs/ layout read at a chosen bin size, the samplesheet's bin_size reaching the QC
step, one-line errors for a bad HD folder, the simulated HD samples, and bins drawn as rasters of real-size squares."""

import json
import logging
import re
import shutil

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from tissuemap.cli import main
from tissuemap.errors import InputError
from tissuemap.io import read_spatial_sample
from tissuemap.io.spatial import check_spatial_input
from tissuemap.io.spatialdata_export import bin_squares, hd_bin_squares
from tissuemap.locations import locations_of, shared_locations
from tissuemap.plotting.bins import bin_grid
from tissuemap.qc import run_qc
from tissuemap.report.figures import TissueView, abundance_maps, tissue_view
from tissuemap.report.inputs import read_abundance
from tissuemap.report.sample import qc_rows
from tissuemap.runner import RunOptions, plan_steps
from tissuemap.samplesheet import read_samplesheet
from tissuemap.simulation.dataset import simulate_dataset
from tissuemap.simulation.parameters import SimulationParameters

# drawn at 2 um, so that all three Space Ranger bin folders exist (8 and 16 um aggregated)
SMALL_HD = {"seed": 3, "n_samples": 1, "n_spots": 6000, "n_genes": 150, "n_cell_types": 6, "n_cells": 400,
            "n_batches": 3, "n_zones": 3, "visium_hd": True, "bin_size": 2, "n_cells_per_location": 0.125}


@pytest.fixture(scope="module")
def hd_dataset(tmp_path_factory):
    return simulate_dataset(SimulationParameters(**SMALL_HD), tmp_path_factory.mktemp("hd") / "data")


@pytest.fixture(scope="module")
def outs(hd_dataset):
    return hd_dataset / "samples" / "sample1" / "outs"


def hd_copy(outs, tmp_path):
    shutil.copytree(outs, tmp_path / "outs")
    return tmp_path / "outs"


@pytest.mark.parametrize("bin_size", [2, 8, 16])
def test_each_bin_size_is_read_with_its_positions_and_scale_factors(outs, bin_size):
    adata = read_spatial_sample(outs, "hd", bin_size)
    folder = outs / "binned_outputs" / f"square_{bin_size:03d}um"
    positions = pd.read_parquet(folder / "spatial" / "tissue_positions.parquet").set_index("barcode")
    assert adata.n_obs == int(positions["in_tissue"].sum())
    assert adata.obs_names.str.startswith(f"s_{bin_size:03d}um_").all()
    placed = positions.loc[adata.obs_names]
    assert np.allclose(adata.obsm["spatial"], placed[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy())
    assert (adata.obs["array_row"].to_numpy() == placed["array_row"].to_numpy()).all()
    scalefactors = adata.uns["spatial"]["hd"]["scalefactors"]
    assert scalefactors["bin_size_um"] == bin_size and scalefactors["microns_per_pixel"] > 0
    assert set(adata.uns["spatial"]["hd"]["images"]) == {"hires", "lowres"}


def test_larger_bins_hold_the_counts_of_the_smaller_ones(outs):
    totals = {size: read_spatial_sample(outs, "hd", size).X.sum() for size in (2, 8, 16)}
    assert totals[2] == totals[8] == totals[16] > 0


def test_default_bin_size_is_8_and_the_layout_is_logged(outs, caplog):
    with caplog.at_level(logging.INFO, logger="tissuemap"):
        adata = read_spatial_sample(outs, "hd")
    assert adata.obs_names.str.startswith("s_008um_").all()
    assert "Visium HD layout; reading the 8 um bins of binned_outputs/square_008um (the default" in caplog.text


def test_bin_size_is_ignored_for_standard_visium_and_says_so(real_data, caplog):
    with caplog.at_level(logging.INFO, logger="tissuemap"):
        adata = read_spatial_sample(real_data / "visium" / "breast_crop", "breast", 16)
    assert adata.n_obs == 338
    assert "standard Visium (Space Ranger outs/) layout" in caplog.text
    assert "bin_size 16 ignored" in caplog.text


def test_samplesheet_bin_size_is_checked_and_reaches_the_qc_step(outs, tmp_path):
    sheet = tmp_path / "samplesheet.csv"
    sheet.write_text(f"sample,spaceranger_dir,bin_size\nhd,{outs},16\nhd8,{outs},\n")
    samples = read_samplesheet(sheet)
    assert [sample.bin_size for sample in samples] == [16, None]
    steps = plan_steps(sheet, RunOptions(signatures=tmp_path / "signatures.csv", n_cells_per_location=2), tmp_path)
    qc_args = {step.key: step.args for step in steps if step.command == ("qc",)}
    assert qc_args["qc/hd"][qc_args["qc/hd"].index("--bin-size") + 1] == "16"
    assert "--bin-size" not in qc_args["qc/hd8"]  # tissuemap qc applies its default
    sheet.write_text(f"sample,spaceranger_dir,bin_size\nhd,{outs},4\n")
    with pytest.raises(InputError, match=r"row 1 \(sample 'hd'\), column 'bin_size': bin_size must be 2, 8 or 16"):
        read_samplesheet(sheet)


def missing_bin_folder(outs, tmp_path):
    outs = hd_copy(outs, tmp_path)
    shutil.rmtree(outs / "binned_outputs" / "square_016um")
    return outs, "16", "square_016um: not found (bin size 16 um; this folder has square_002um, square_008um)"


def missing_parquet(outs, tmp_path):
    outs = hd_copy(outs, tmp_path)
    (outs / "binned_outputs" / "square_008um" / "spatial" / "tissue_positions.parquet").unlink()
    return outs, "8", "square_008um/spatial/tissue_positions.parquet: not found (Visium HD bin positions)"


def missing_matrix(outs, tmp_path):
    outs = hd_copy(outs, tmp_path)
    (outs / "binned_outputs" / "square_008um" / "filtered_feature_bc_matrix.h5").unlink()
    return outs, "8", "square_008um: no filtered_feature_bc_matrix.h5 or raw_feature_bc_matrix.h5"


@pytest.mark.parametrize("spoil", [missing_bin_folder, missing_parquet, missing_matrix])
def test_bad_hd_folder_is_a_one_line_error_without_output(outs, tmp_path, spoil):
    spoiled, bin_size, message = spoil(outs, tmp_path)
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_spatial_input(spoiled, int(bin_size))  # tissuemap run's check before any step
    result = CliRunner().invoke(main, ["qc", "--sample", "hd", "--input", str(spoiled), "--bin-size", bin_size,
                                       "--outdir", str(tmp_path / "qc")])
    assert result.exit_code != 0
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "qc").exists()


def test_unknown_bin_size_is_refused_by_qc(outs, tmp_path):
    result = CliRunner().invoke(main, ["qc", "--sample", "hd", "--input", str(outs), "--bin-size", "4",
                                       "--outdir", str(tmp_path / "qc")])
    assert result.exit_code == 2 and "'4' is not one of '2', '8', '16'" in result.output
    assert not (tmp_path / "qc").exists()


def test_simulated_hd_sample_layout_depth_and_truth(hd_dataset, outs):
    assert pd.read_csv(hd_dataset / "samplesheet.csv")["bin_size"].tolist() == [2]
    truth = pd.read_csv(hd_dataset / "truth" / "sample1.cell_abundance.csv", index_col=0)
    truth16 = pd.read_csv(hd_dataset / "truth" / "sample1.square_016um.cell_abundance.csv", index_col=0)
    assert len(truth) == SMALL_HD["n_spots"] and truth.to_numpy().sum() == truth16.to_numpy().sum()
    # one to three cells per 8 um bin (2 from the zones' types, plus rare types' cells), at low depth
    assert 1 < 16 * truth.to_numpy().sum(axis=1).mean() < 3
    with h5py.File(outs / "binned_outputs" / "square_016um" / "filtered_feature_bc_matrix.h5") as handle:
        barcodes = handle["matrix/barcodes"][:].astype(str)
    assert list(barcodes) == sorted(truth16.index)
    positions = pd.read_parquet(outs / "binned_outputs" / "square_016um" / "spatial" / "tissue_positions.parquet")
    assert list(positions.columns) == ["barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres",
                                       "pxl_col_in_fullres"]
    scalefactors = json.loads((outs / "binned_outputs" / "square_016um" / "spatial" / "scalefactors_json.json")
                              .read_text())
    assert scalefactors["bin_size_um"] == 16
    side_pixels = np.diff(np.sort(positions["pxl_col_in_fullres"].unique())[:2])[0]
    assert side_pixels == pytest.approx(16 / scalefactors["microns_per_pixel"])
    umis_8um = np.asarray(read_spatial_sample(outs, "hd", 8).X.sum(axis=1)).ravel()
    assert 50 < np.median(umis_8um) < 500


def test_hd_simulation_is_reproducible(hd_dataset, tmp_path):
    again = simulate_dataset(SimulationParameters(**SMALL_HD), tmp_path / "again")
    name = "samples/sample1/outs/binned_outputs/square_008um/filtered_feature_bc_matrix.h5"
    assert (again / name).read_bytes() == (hd_dataset / name).read_bytes()


def rotated_bins(n_side: int, side: float, angle: float):
    rows, columns = (grid.ravel() for grid in np.mgrid[0:n_side, 0:n_side])
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    xy = (np.column_stack([columns, rows]) * side) @ rotation.T + [500.0, 300.0]
    obs = pd.DataFrame({"array_row": rows + 7, "array_col": columns + 3})
    return obs, xy


def test_bins_are_squares_of_their_size_on_a_rotated_grid():
    obs, xy = rotated_bins(20, 13.0, 0.3)
    grid = bin_grid(obs, xy, {"bin_size_um": 8.0, "microns_per_pixel": 8 / 13}, 1.0)
    assert grid.side == pytest.approx(13.0)
    rows, columns = grid.locate(xy)
    assert (rows == obs["array_row"] - 7).all() and (columns == obs["array_col"] - 3).all()
    # without grid indices, axis-aligned bins are placed from their positions
    obs_free, xy_free = rotated_bins(20, 13.0, 0.0)
    free = bin_grid(obs_free.iloc[:, :0], xy_free, {"bin_size_um": 8.0, "microns_per_pixel": 8 / 13}, 1.0)
    assert free.side == pytest.approx(13.0) and free.shape == (20, 20)
    # spots (no bin size) are not bins
    assert bin_grid(obs, xy, {"spot_diameter_fullres": 90.0}, 1.0) is None


def test_a_map_of_250000_bins_is_a_small_png():
    obs, xy = rotated_bins(500, 10.0, 0.0)
    grid = bin_grid(obs, xy, {"bin_size_um": 8.0, "microns_per_pixel": 0.8}, 1.0)
    view = TissueView(xy=xy, radius=5.0, image=None, xlim=(xy[:, 0].min() - 15, xy[:, 0].max() + 15),
                      ylim=(xy[:, 1].max() + 15, xy[:, 1].min() - 15), bins=grid)
    rng = np.random.default_rng(0)
    abundance = pd.DataFrame(rng.gamma(1.0, 1.0, (len(xy), 3)), columns=["A", "B", "C"])
    assert len(abundance_maps(abundance, view)) < 2_000_000


def test_hd_sample_goes_through_qc_map_and_report(hd_dataset, outs, tmp_path):
    def invoke(*args):
        result = CliRunner().invoke(main, [str(arg) for arg in args])
        assert result.exit_code == 0, result.output

    invoke("qc", "--sample", "hd", "--input", outs, "--bin-size", 16, "--outdir", tmp_path / "hd")
    assert json.loads((tmp_path / "hd" / "hd.qc.json").read_text())["bin_size_um"] == 16
    invoke("signatures", "--reference", hd_dataset / "reference.h5ad", "--labels-key", "cell_type", "--method", "mean",
           "--outdir", tmp_path / "reference")
    invoke("map", "--spatial", tmp_path / "hd" / "hd.qc.h5ad", "--signatures", tmp_path / "reference" / "signatures.csv",
           "--n-cells-per-location", 8, "--max-epochs", 3, "--min-shared-genes", 100, "--outdir", tmp_path / "mapped")
    for path in (tmp_path / "hd").iterdir():
        shutil.copy(path, tmp_path / "mapped" / "hd")
    invoke("report", "sample", "--sample", "hd", "--input-dir", tmp_path / "mapped" / "hd", "--outdir", tmp_path)
    abundance = read_abundance(tmp_path / "mapped" / "hd" / "hd.abundance.h5ad")
    assert tissue_view(abundance, "hd").bins is not None  # the report drew 16 um squares, not circles
    assert tissue_view(abundance, "hd").bins.side == pytest.approx(
        16 / abundance.uns["spatial"]["hd"]["scalefactors"]["microns_per_pixel"]
        * abundance.uns["spatial"]["hd"]["scalefactors"]["tissue_hires_scalef"])
    page = (tmp_path / "hd.report.html").read_text()
    assert "<th scope=\"row\">Visium HD bins</th><td>16 µm squares</td>" in page
    # the report says bins where a Visium report says spots (tests/test_report.py)
    for text in ("<h2>Bin QC</h2>", "<strong>Bin QC metrics.</strong>", "<strong>Cells of each type per bin.</strong>",
                 "<strong>Dominant cell type per bin.</strong>", "bins mapped", "16 µm bins</caption>"):
        assert text in page
    visible = re.sub(r'src="data:[^"]*"', "", page)
    assert not re.search(r"\bspots?\b", visible, flags=re.IGNORECASE), re.findall(r".{60}\bspots?\b.{20}", visible)
    assert len(page) < 3_000_000


def slide_positions(side: int, in_tissue):
    """An HD positions table of a ``side`` x ``side`` grid of 2 um bins, built in Arrow (no Python string per bin)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    rows, columns = (pa.array(grid.ravel()) for grid in np.mgrid[0:side, 0:side])
    padded = [pc.utf8_lpad(pc.cast(index, pa.string()), 5, "0") for index in (rows, columns)]
    return pa.table({
        "barcode": pc.binary_join_element_wise("s_002um", padded[0], pc.binary_join_element_wise(padded[1], "1", "-"),
                                               "_"),
        "in_tissue": pa.array(np.asarray(in_tissue, dtype=np.int32)),
        "array_row": rows, "array_col": columns,
        "pxl_row_in_fullres": pc.multiply(pc.cast(rows, pa.float64()), 7.3),
        "pxl_col_in_fullres": pc.multiply(pc.cast(columns, pa.float64()), 7.3),
        "unused": pc.cast(rows, pa.string()),  # a column the reader must not load
    })


def test_a_whole_slide_of_positions_is_read_without_a_python_object_per_bin(tmp_path):
    import tracemalloc

    import pyarrow.parquet as pq

    from tissuemap.io.positions import read_positions

    table = slide_positions(1000, np.arange(1_000_000) % 2 == 0)
    path = tmp_path / "tissue_positions.parquet"
    pq.write_table(table, path)
    barcodes = pd.Index(["s_002um_00500_00500-1", "s_002um_00000_00007-1", "s_002um_00999_00999-1"])
    tracemalloc.start()
    positions = read_positions(path, barcodes, "matrix.h5")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 20 * 2**20  # pandas' read_parquet makes ~100 MB of Python strings for the million barcodes
    assert positions.index.equals(barcodes)
    assert positions["array_row"].tolist() == [500, 0, 999] and positions["array_col"].tolist() == [500, 7, 999]
    assert positions["in_tissue"].tolist() == [1, 0, 0]
    assert positions["pxl_col_in_fullres"].to_numpy() == pytest.approx([3650.0, 51.1, 7292.7])


@pytest.mark.parametrize("change, message", [
    (lambda frame: frame.drop(columns="pxl_row_in_fullres"), "missing column(s) pxl_row_in_fullres"),
    (lambda frame: frame.assign(array_col=frame["array_col"].astype(str)), "column 'array_col' must hold numbers"),
    (lambda frame: frame.assign(pxl_col_in_fullres=frame["pxl_col_in_fullres"].where(frame.index != 3)),
     "column 'pxl_col_in_fullres' must hold numbers"),
    (lambda frame: pd.concat([frame, frame.iloc[[3]]]), "barcode 's_002um_00000_00003-1' appears more than once"),
    (lambda frame: frame.drop(index=3), "1 of 16 barcodes of matrix.h5 are missing (first: s_002um_00000_00003-1)"),
])
def test_bad_positions_parquet_is_a_one_line_error(tmp_path, change, message):
    from tissuemap.io.positions import read_positions

    frame = slide_positions(5, np.ones(25)).to_pandas()
    path = tmp_path / "tissue_positions.parquet"
    change(frame).to_parquet(path, index=False)
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_positions(path, pd.Index(frame["barcode"][:16]), "matrix.h5")


def test_a_repeated_barcode_outside_the_matrix_is_no_error(tmp_path):
    from tissuemap.io.positions import read_positions

    frame = slide_positions(5, np.ones(25)).to_pandas()
    path = tmp_path / "tissue_positions.parquet"
    pd.concat([frame, frame.iloc[[20]]]).to_parquet(path, index=False)
    assert len(read_positions(path, pd.Index(frame["barcode"][:16]), "matrix.h5")) == 16


def test_locations_are_named_bins_for_visium_hd_and_spots_for_visium():
    assert (locations_of(None).one, locations_of(None).kind) == ("spot", "spots")
    assert (locations_of(8.0).many, locations_of(8.0).kind) == ("bins", "8 µm bins")
    assert shared_locations([locations_of(8), locations_of(8)]) == locations_of(8)
    assert shared_locations([locations_of(8), locations_of(16)]).kind == "bins"
    assert shared_locations([locations_of(8), locations_of(None)]).many == "locations"
    hd_rows = dict(qc_rows({**QC_SUMMARY, "bin_size_um": 8}))
    assert hd_rows["bins kept"] == "12" and "UMIs per bin, median (5% – 95%)" in hd_rows
    assert not any("spot" in label for label in hd_rows)
    visium_rows = dict(qc_rows({**QC_SUMMARY, "bin_size_um": None}))
    assert visium_rows["spots kept"] == "12" and not any("bin" in label for label in visium_rows)


QC_SUMMARY = {"spots_in_tissue": 13, "spots_kept": 12, "genes_in_matrix": 100, "mt_genes_removed": [],
              "spots_removed": {"total": 1, "by_reason": {"below_min_counts": 1}},
              "umis_per_spot": {"median": 50, "q05": 10, "q95": 90}, "genes_per_spot": {"median": 20, "q05": 5, "q95": 40},
              "mt_fraction": {"median": 0.0}, "source": "outs"}


def test_qc_log_and_summary_say_bins_for_visium_hd_and_spots_for_visium(outs, real_data, caplog):
    with caplog.at_level(logging.INFO, logger="tissuemap"):
        _, summary = run_qc(read_spatial_sample(outs, "hd", 16), "hd")
    assert summary["bin_size_um"] == 16
    assert re.search(r"hd: removed \d+ of \d+ bins with fewer than 1 UMIs", caplog.text)
    assert re.search(r"\d+ of \d+ bins are in the tissue", caplog.text)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="tissuemap"):
        _, summary = run_qc(read_spatial_sample(real_data / "visium" / "breast_crop", "breast"), "breast")
    assert summary["bin_size_um"] is None
    assert re.search(r"breast: removed \d+ of 338 spots with fewer than 1 UMIs", caplog.text)


def test_spatialdata_bins_are_squares_of_their_real_size_that_tile_their_grid(outs, real_data):
    # the geometry of `tissuemap map --spatialdata` for HD bins (the spatialdata call itself: tests/test_spatialdata.py)
    square = bin_squares(np.array([[100.0, 200.0]]), 8, 0.5)[0]
    np.testing.assert_allclose(square, [[92, 192], [108, 192], [108, 208], [92, 208]])

    obs, xy = rotated_bins(3, 13.0, 0.3)
    adata = ad.AnnData(obs=obs.set_axis(obs.index.astype(str)), obsm={"spatial": xy},
                       uns={"spatial": {"hd": {"scalefactors": {"bin_size_um": 8.0, "microns_per_pixel": 8 / 13}}}})
    squares = hd_bin_squares(adata, "hd")
    assert squares.shape == (9, 4, 2)
    edges = np.roll(squares, -1, axis=1) - squares
    np.testing.assert_allclose(np.linalg.norm(edges, axis=2), 13.0)
    step = (xy[1] - xy[0]) / 13.0  # the grid's column direction
    np.testing.assert_allclose(np.abs(edges[:, ::2] @ step), 13.0)  # sides along the grid, not the image axes
    # bins (0, 0), (0, 1), (1, 0), (1, 1) meet at one corner: the squares tile the grid, without gap or overlap
    meeting = xy[[0, 1, 3, 4]].mean(axis=0)
    for index in (0, 1, 3, 4):
        assert np.isclose(squares[index], meeting).all(axis=1).sum() == 1

    hd = read_spatial_sample(outs, "hd", 16)
    hd_squares = hd_bin_squares(hd, "hd")
    side = 16 / hd.uns["spatial"]["hd"]["scalefactors"]["microns_per_pixel"]
    assert hd_squares.shape == (hd.n_obs, 4, 2)
    np.testing.assert_allclose(np.linalg.norm(hd_squares[:, 1] - hd_squares[:, 0], axis=1), side)
    np.testing.assert_allclose(hd_squares.mean(axis=1), hd.obsm["spatial"])
    # standard Visium spots stay circles
    assert hd_bin_squares(read_spatial_sample(real_data / "visium" / "breast_crop", "breast"), "breast") is None
