"""`tissuemap run` checks every input before its first step: a mistake is one line, and no step has run."""

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
from click.testing import CliRunner

from tissuemap.cli import main
from tissuemap.errors import InputError
from tissuemap.runner import RunOptions, check_inputs, plan_steps
from tissuemap.samplesheet import read_samplesheet


@pytest.fixture(scope="module")
def simulated(real_data):
    """The small simulated samples and reference (read only)."""
    return real_data.parent / "simulated"


def normalised_with_counts_layer(simulated, folder):
    """The simulated reference as many are shared: log-normalised X, raw counts in layers['counts']."""
    adata = ad.read_h5ad(simulated / "reference.h5ad")
    adata.layers["counts"] = adata.X.copy()
    totals = np.asarray(adata.X.sum(axis=1)).ravel()
    adata.X = sp.csr_matrix(np.log1p(adata.X.multiply(1e4 / totals[:, None])))
    path = folder / "normalised.h5ad"
    adata.write_h5ad(path)
    return path


def run(sheet, outdir, *options):
    return CliRunner().invoke(main, ["run", "--input", str(sheet), "--n-cells-per-location", "8", *map(str, options),
                                     "--outdir", str(outdir)])


def assert_stopped_before_any_step(result, outdir, *expected):
    assert result.exit_code == 1 and "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, result.output
    for part in expected:
        assert part in errors[0], (part, errors[0])
    assert not outdir.exists()  # not even the QC of the first sample


@pytest.mark.parametrize("options, expected", [
    (["--labels-key", "celltype"], ["reference.h5ad: obs has no column 'celltype' (given as --labels-key)",
                                    "available columns: 'cell_type'"]),
    (["--labels-key", "cell_type", "--batch-key", "donor"], ["obs has no column 'donor' (given as --batch-key)"]),
    (["--labels-key", "cell_type", "--covariate-keys", "technology,assay"],
     ["obs has no column 'assay' (given as --covariate-keys)"]),
    (["--labels-key", "cell_type", "--layer", "counts"], ["has no layer 'counts' (given as --layer)"]),
    (["--labels-key", "cell_type", "--min-cells-per-type", "100"],
     ["fewer than 100 cells", "--min-cells-per-type"]),
])
def test_a_reference_mistake_stops_run_before_qc(simulated, tmp_path, options, expected):
    outdir = tmp_path / "results"
    result = run(simulated / "samplesheet.csv", outdir, "--reference", simulated / "reference.h5ad", *options)
    assert_stopped_before_any_step(result, outdir, *expected)


def test_a_normalised_reference_stops_run_before_qc_and_names_the_layer_option(simulated, tmp_path):
    reference = normalised_with_counts_layer(simulated, tmp_path)
    outdir = tmp_path / "results"
    result = run(simulated / "samplesheet.csv", outdir, "--reference", reference, "--labels-key", "cell_type")
    assert_stopped_before_any_step(result, outdir, f"{reference}: X holds non-integer values", "raw counts",
                                   "--layer NAME (layers: 'counts')")
    # with the layer named, the same reference passes the checks, and the gene filter reads the layer (it writes
    # the counts into the filtered reference's X, which the signatures step reads)
    samples = read_samplesheet(simulated / "samplesheet.csv")
    with_layer = RunOptions(reference=reference, labels_key="cell_type", layer="counts", n_cells_per_location=8)
    check_inputs(samples, with_layer)
    steps = {step.key: step for step in plan_steps(simulated / "samplesheet.csv", with_layer, tmp_path / "results")}
    assert steps["filter-genes"].command_line().endswith(f"--layer counts --outdir {tmp_path / 'results' / 'reference'}")
    assert "--layer" not in steps["signatures"].args
    with pytest.raises(InputError, match="non-integer"):
        check_inputs(samples, RunOptions(reference=reference, labels_key="cell_type"))


def test_a_sample_folder_without_its_matrix_stops_run_before_qc(simulated, tmp_path):
    empty = tmp_path / "empty_outs"
    (empty / "spatial").mkdir(parents=True)
    sheet = tmp_path / "samplesheet.csv"
    sheet.write_text(f"sample,spaceranger_dir\nsample1,{simulated / 'samples' / 'sample1' / 'outs'}\nempty,{empty}\n")
    outdir = tmp_path / "results"
    result = run(sheet, outdir, "--reference", simulated / "reference.h5ad", "--labels-key", "cell_type")
    assert_stopped_before_any_step(result, outdir, f"{empty}: no filtered_feature_bc_matrix.h5")


def test_unreadable_signatures_stop_run_before_qc(simulated, tmp_path):
    outdir = tmp_path / "results"
    result = run(simulated / "samplesheet.csv", outdir, "--signatures", simulated / "reference.h5ad")
    assert_stopped_before_any_step(result, outdir, "reference.h5ad: cannot be read as a CSV table")


@pytest.mark.parametrize("binary", ["simulated/reference.h5ad",
                                    "real/visium/breast_crop/filtered_feature_bc_matrix.h5",
                                    "real/visium/breast_crop/spatial/tissue_lowres_image.png"])
def test_a_binary_file_as_input_is_one_line_naming_what_input_expects(real_data, tmp_path, binary):
    path = real_data.parent / binary
    outdir = tmp_path / "results"
    result = run(path, outdir, "--signatures", tmp_path / "signatures.csv")
    assert_stopped_before_any_step(result, outdir, f"{path}: not a text file",
                                   "--input expects the samplesheet, a CSV file")


def test_an_h5ad_sample_without_coordinates_stops_run_before_qc(simulated, tmp_path):
    no_coordinates = tmp_path / "counts_only.h5ad"
    ad.AnnData(sp.csr_matrix(np.ones((3, 2), dtype=np.float32))).write_h5ad(no_coordinates)
    sheet = tmp_path / "samplesheet.csv"
    sheet.write_text(f"sample,h5ad\nplain,{no_coordinates}\n")
    outdir = tmp_path / "results"
    result = run(sheet, outdir, "--reference", simulated / "reference.h5ad", "--labels-key", "cell_type")
    assert_stopped_before_any_step(result, outdir, f"{no_coordinates}: has no obsm['spatial']")
