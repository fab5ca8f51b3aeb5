"""Cells per spot counted on the image (`tissuemap map --cell-counts`, samplesheet column cell_counts): each listed
spot's count is its prior mean of cells, the others keep the sample's N̂, and bad files are one-line errors."""

from pathlib import Path

import anndata as ad
import pandas as pd
import pytest
from click.testing import CliRunner

from tissuemap.cell_counts import MIN_CELLS_PER_SPOT, read_cell_counts
from tissuemap.cli import main
from tissuemap.errors import InputError
from tissuemap.mapping import attach_cell_counts, read_qc_sample, read_signatures, setup_mapping
from tissuemap.runner import RunOptions, plan_steps
from tissuemap.samplesheet import read_samplesheet

SIMULATED = Path(__file__).parent / "data" / "simulated"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def write_counts(path: Path, rows: list[tuple]) -> Path:
    pd.DataFrame(rows, columns=["barcode", "n_cells"]).to_csv(path, index=False)
    return path


def test_listed_spots_get_their_count_as_prior_and_the_others_keep_n_hat(qc_samples, tmp_path):
    sample = read_qc_sample(qc_samples / "sample1.qc.h5ad", 8.0)
    barcodes = sample.adata.obs_names
    counts = write_counts(tmp_path / "counts.csv", [(barcodes[0], 3), (barcodes[1], 0), (barcodes[2], 12.5),
                                                    ("NOT-A-SPOT-1", 40), (barcodes[3], None)])
    attach_cell_counts([sample], {"": counts})
    setup = setup_mapping([sample], read_signatures(qc_samples / "signatures.csv"), 10)
    prior = setup.data.n_cells_per_location[:, 0].numpy()
    assert prior[:4].tolist() == [3, MIN_CELLS_PER_SPOT, 12.5, 8]  # an empty count keeps N̂ as an unlisted spot
    assert (prior[4:] == 8).all()


def test_map_and_run_pass_each_samples_counts(qc_samples, tmp_path):
    barcodes = ad.read_h5ad(qc_samples / "sample2.qc.h5ad").obs_names
    counts = write_counts(tmp_path / "sample2_nuclei.csv", [(barcode, 5) for barcode in barcodes[:10]])
    result = CliRunner().invoke(main, [
        "map", "--spatial", str(qc_samples / "sample1.qc.h5ad"), str(qc_samples / "sample2.qc.h5ad"),
        "--signatures", str(qc_samples / "signatures.csv"), "--n-cells-per-location", "8",
        "--cell-counts", f"sample2={counts}", "--max-epochs", "3", "--min-shared-genes", "10", "--device", "cpu",
        "--outdir", str(tmp_path / "map"),
    ])
    assert result.exit_code == 0, result.output
    mapped = ad.read_h5ad(tmp_path / "map" / "sample2" / "sample2.abundance.h5ad")
    assert mapped.obs["n_cells_prior"].tolist() == [5.0] * 10 + [8.0] * (mapped.n_obs - 10)
    assert mapped.uns["mod"]["cell_counts"] == str(counts)
    first = ad.read_h5ad(tmp_path / "map" / "sample1" / "sample1.abundance.h5ad")
    assert (first.obs["n_cells_prior"] == 8.0).all() and first.uns["mod"]["cell_counts"] == ""

    # the samplesheet column, a relative path, reaches the map step as --cell-counts NAME=FILE
    sheet = tmp_path / "samplesheet.csv"
    sheet.write_text("sample,spaceranger_dir,cell_counts\n"
                     f"sample1,{SIMULATED / 'samples/sample1/outs'},\n"
                     f"sample2,{SIMULATED / 'samples/sample2/outs'},sample2_nuclei.csv\n")
    assert read_samplesheet(sheet)[1].cell_counts == counts
    steps = plan_steps(sheet, RunOptions(signatures=qc_samples / "signatures.csv", n_cells_per_location=8,
                                         mapping_mode="joint"), tmp_path / "run")
    (map_step,) = [step for step in steps if step.command == ("map",)]
    assert map_step.args[map_step.args.index("--cell-counts") + 1] == f"sample2={counts}"
    assert counts in map_step.inputs  # a changed counts file runs the mapping again


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("barcode,cells\nA,1\n", "no column 'n_cells'"),
        ("barcode,n_cells\nA,1\nA,2\n", "barcode 'A' appears more than once"),
        ("barcode,n_cells\nA,1\nB,many\n", "row 3 (barcode 'B'), column 'n_cells' is 'many'"),
        ("barcode,n_cells\nA,-1\n", "row 2 (barcode 'A'), column 'n_cells' is '-1'"),
        ("", "cannot be read as a CSV table"),
    ],
    ids=["missing-column", "repeated-barcode", "not-a-number", "negative", "empty"],
)
def test_bad_cell_counts_files_are_one_line_errors(tmp_path, content, message):
    path = tmp_path / "counts.csv"
    path.write_text(content)
    with pytest.raises(InputError, match="counts.csv: ") as error:
        read_cell_counts(path)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_counts_of_another_sample_or_an_unmapped_sample_are_refused(qc_samples, tmp_path):
    counts = write_counts(tmp_path / "counts.csv", [("OTHER-1", 3)])
    signatures = str(qc_samples / "signatures.csv")
    for given, message in ((str(counts), "none of its 1 barcodes is a spot of sample 'sample1'"),
                           (f"sample9={counts}", "no sample 'sample9' is mapped here"),
                           (f"sample1={tmp_path / 'missing.csv'}", "is not a file")):
        result = CliRunner().invoke(main, ["map", "--spatial", str(qc_samples / "sample1.qc.h5ad"), "--signatures",
                                           signatures, "--n-cells-per-location", "8", "--cell-counts", given,
                                           "--max-epochs", "3", "--outdir", str(tmp_path / "out")])
        assert result.exit_code != 0 and message in result.output, result.output
        assert not (tmp_path / "out" / "sample1").exists()  # nothing written
