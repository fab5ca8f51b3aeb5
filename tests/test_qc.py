"""Spot QC (`tissuemap qc` and run_qc): mitochondrial genes moved out, empty spots removed, outputs all-or-nothing."""

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from click.testing import CliRunner

from tissuemap.cli import main
from tissuemap.errors import InputError
from tissuemap.io import read_spaceranger
from tissuemap.qc import BELOW_MIN_COUNTS, run_qc

OUTPUT_SUFFIXES = (".qc.h5ad", ".qc.json", ".qc_histograms.png", ".qc_spatial.png")


def run_cli(*args):
    return CliRunner().invoke(main, ["qc", *map(str, args)])


@pytest.fixture(scope="module")
def qc_outputs(real_data, tmp_path_factory):
    """Both real samples QC'd by the command line into one folder (breast with mapping parameters given)."""
    outdir = tmp_path_factory.mktemp("qc")
    visium = real_data / "visium"
    breast = run_cli(
        "--sample", "breast", "--input", visium / "breast_crop", "--outdir", outdir,
        "--n-cells-per-location", 8, "--detection-alpha", 20, "--slide", "slide1",
    )
    assert breast.exit_code == 0, breast.output
    brain = run_cli("--sample", "brain", "--input", visium / "mouse_brain_100genes", "--outdir", outdir)
    assert brain.exit_code == 0, brain.output
    return outdir


def read_outputs(outdir, sample):
    return ad.read_h5ad(outdir / f"{sample}.qc.h5ad"), json.loads((outdir / f"{sample}.qc.json").read_text())


def test_every_output_is_written(qc_outputs):
    expected = {f"{sample}{suffix}" for sample in ("breast", "brain") for suffix in OUTPUT_SUFFIXES}
    assert {path.name for path in qc_outputs.iterdir()} == expected
    for name in expected:
        if name.endswith(".png"):
            assert (qc_outputs / name).read_bytes()[:4] == b"\x89PNG"


def test_mitochondrial_genes_move_to_obsm(qc_outputs, real_data):
    adata, report = read_outputs(qc_outputs, "breast")
    original = read_spaceranger(real_data / "visium" / "breast_crop", "breast")
    mt = original.var["SYMBOL"].str.startswith("MT-").to_numpy()
    assert mt.sum() == 13
    assert not adata.var["SYMBOL"].str.upper().str.startswith("MT-").any()
    assert list(adata.obsm["MT"].columns) == list(original.var["SYMBOL"][mt])
    assert report["mt_genes_removed"] == list(original.var["SYMBOL"][mt])
    # nothing lost: the matrix plus the MT counts are the original counts, spot by spot
    assert np.array_equal(adata.obsm["MT"].to_numpy(), original[:, mt].X.toarray())
    assert (adata.X != original[:, ~mt].X).nnz == 0
    expected_frac = original[:, mt].X.sum(axis=1).A1 / original.X.sum(axis=1).A1
    assert np.allclose(adata.obs["mt_frac"], expected_frac)
    assert report["mt_fraction"]["median"] == pytest.approx(np.median(expected_frac))


def test_breast_sample_keeps_raw_counts_coordinates_and_parameters(qc_outputs):
    adata, report = read_outputs(qc_outputs, "breast")
    assert adata.n_obs == 338 and report["spots_kept"] == 338 and report["spots_removed"]["total"] == 0
    assert sp.issparse(adata.X) and np.array_equal(adata.X.data, np.round(adata.X.data))
    assert adata.var_names.str.startswith("ENSG").all() and "SYMBOL" in adata.var
    assert adata.obsm["spatial"].shape == (338, 2)
    assert {"tissue_hires_scalef", "tissue_lowres_scalef"} <= set(adata.uns["spatial"]["breast"]["scalefactors"])
    assert np.array_equal(adata.obs["total_counts"], adata.X.sum(axis=1).A1)
    assert np.array_equal(adata.obs["n_genes_by_counts"], (adata.X > 0).sum(axis=1).A1)
    params = dict(adata.uns["tissuemap"])
    assert {k: params[k] for k in ("sample", "slide", "n_cells_per_location", "detection_alpha")} == {
        "sample": "breast", "slide": "slide1", "n_cells_per_location": 8.0, "detection_alpha": 20.0,
    }
    assert report["software_version"] == "spaceranger-1.3.0"
    assert report["genes_in_matrix"] == 36601 - 13
    assert report["umis_per_spot"]["median"] == pytest.approx(np.median(adata.obs["total_counts"]))
    assert report["umis_per_spot"]["q05"] < report["umis_per_spot"]["q25"] < report["umis_per_spot"]["q95"]
    assert report["thresholds"] == {"min_counts": 1}


def test_brain_sample_loses_only_its_empty_spots(qc_outputs):
    adata, report = read_outputs(qc_outputs, "brain")
    # the default threshold keeps ordinary spots of a 100-gene panel (median ~50 UMIs) and drops the 6 empty ones
    assert report["spots_in_tissue"] == 2695 and report["spots_kept"] == 2689
    assert report["spots_removed"]["by_reason"] == {BELOW_MIN_COUNTS: 6}
    removed = report["spots_removed"]["spots"]
    assert [spot["total_counts"] for spot in removed] == [0] * 6
    assert not set(adata.obs_names) & {spot["barcode"] for spot in removed}
    assert list(adata.uns["qc_removed_spots"].index) == [spot["barcode"] for spot in removed]
    assert adata.obsm["MT"].shape == (2689, 0) and report["software_version"] is None
    assert adata.uns["tissuemap"]["slide"] == "brain" and "n_cells_per_location" not in adata.uns["tissuemap"]


def small_sample() -> ad.AnnData:
    counts = np.array([[5, 0, 5], [1, 1, 0], [0, 0, 4], [2, 2, 2]], dtype=np.float32)
    adata = ad.AnnData(
        sp.csr_matrix(counts),
        obs=pd.DataFrame(index=[f"spot{i}" for i in range(4)]),
        var=pd.DataFrame({"SYMBOL": ["Actb", "Gapdh", "mt-Co1"]}, index=["ENSMUSG1", "ENSMUSG2", "ENSMUSG3"]),
    )
    adata.obsm["spatial"] = np.arange(8, dtype=float).reshape(4, 2)
    return adata


def test_run_qc_thresholds_counts_without_mitochondrial_genes():
    adata = small_sample()
    result, summary = run_qc(adata, "s1", min_counts=3)
    # spot1 has 2 UMIs, spot2 only MT counts: both under 3 once MT genes are out
    assert list(result.obs_names) == ["spot0", "spot3"]
    assert list(result.uns["qc_removed_spots"].index) == ["spot1", "spot2"]
    assert list(result.uns["qc_removed_spots"]["reason"]) == [BELOW_MIN_COUNTS] * 2
    assert np.allclose(result.obs["mt_frac"], [0.5, 1 / 3])
    assert list(result.obs["total_counts"]) == [5, 4]
    assert summary["spots_removed"]["spots"][1] == {"barcode": "spot2", "reason": BELOW_MIN_COUNTS, "total_counts": 0}
    assert adata.shape == (4, 3) and "mt_frac" not in adata.obs  # the input is left as it was


def test_run_qc_fails_when_no_spot_is_left():
    with pytest.raises(InputError, match="all 4 in-tissue spots have fewer than 100 UMIs .*lower --min-counts"):
        run_qc(small_sample(), "s1", min_counts=100)


def test_bad_sample_name_and_missing_input_write_nothing(tmp_path, real_data):
    outdir = tmp_path / "out"
    result = run_cli("--sample", "a b", "--input", real_data / "visium" / "breast_crop", "--outdir", outdir)
    assert result.exit_code == 1 and "--sample: 'a b' is not a valid sample name" in result.output
    result = run_cli("--sample", "s1", "--input", tmp_path / "nowhere", "--outdir", outdir)
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1].startswith(f"Error: {tmp_path / 'nowhere'}: not found")
    assert not outdir.exists()


def test_failure_while_writing_leaves_no_partial_output(tmp_path, real_data, monkeypatch):
    import tissuemap.plotting.qc

    def failing_plot(*args, **kwargs):
        raise InputError("plot failed")

    monkeypatch.setattr(tissuemap.plotting.qc, "plot_qc_spatial", failing_plot)
    outdir = tmp_path / "out"
    brain = real_data / "visium" / "mouse_brain_100genes"
    result = run_cli("--sample", "brain", "--input", brain, "--outdir", outdir)
    assert result.exit_code == 1 and "plot failed" in result.output
    assert list(outdir.iterdir()) == []


def test_too_high_threshold_is_a_user_error(tmp_path, real_data):
    outdir = tmp_path / "out"
    result = run_cli(
        "--sample", "brain", "--input", real_data / "visium" / "mouse_brain_100genes", "--outdir", outdir,
        "--min-counts", 1000,
    )
    assert result.exit_code == 1 and "lower --min-counts" in result.output
    assert not outdir.exists()
