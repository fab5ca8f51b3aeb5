"""`tissuemap multiqc-content`: the QC step's summaries as MultiQC custom content."""

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from tissuemap.cli import main
from tissuemap.errors import InputError
from tissuemap.multiqc import QC_COLUMNS, SPOTS_FILE, TABLE_FILE, read_qc_metrics, write_multiqc_content

SIMULATED = Path(__file__).parent / "data" / "simulated"


@pytest.fixture(scope="module")
def qc_results(tmp_path_factory) -> Path:
    """A results folder as a run leaves it: NAME/NAME.qc.json of the two bundled simulated samples, written by the
    real qc step (so that a change of its summary's keys shows here)."""
    results = tmp_path_factory.mktemp("results")
    for sample in ("sample1", "sample2"):
        outcome = CliRunner().invoke(main, [
            "qc", "--sample", sample, "--input", str(SIMULATED / "samples" / sample / "outs"),
            "--outdir", str(results / sample),
        ])
        assert outcome.exit_code == 0, outcome.output
    return results


def write_summary(folder: Path, name: str, **changes) -> Path:
    """A minimal NAME.qc.json with the values the MultiQC content reads, some of them changed."""
    summary = {
        "sample": name,
        "spots_in_tissue": 100,
        "spots_kept": 90,
        "spots_removed": {"total": 10},
        "genes_in_matrix": 500,
        "umis_per_spot": {"median": 2500.0},
        "genes_per_spot": {"median": 300.0},
        "mt_fraction": {"median": 0.125},
        **changes,
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.qc.json"
    path.write_text(json.dumps(summary))
    return path


def test_content_holds_each_sample_metrics_from_its_qc_json(qc_results, tmp_path):
    written = write_multiqc_content(qc_results, tmp_path / "mqc")

    assert sorted(path.name for path in written) == sorted([TABLE_FILE, SPOTS_FILE])
    assert sorted(path.name for path in (tmp_path / "mqc").iterdir()) == sorted([TABLE_FILE, SPOTS_FILE])
    table = json.loads((tmp_path / "mqc" / TABLE_FILE).read_text())
    spots = json.loads((tmp_path / "mqc" / SPOTS_FILE).read_text())
    assert table["plot_type"] == "table" and spots["plot_type"] == "bargraph"
    assert list(table["data"]) == ["sample1", "sample2"]
    for sample in ("sample1", "sample2"):
        summary = json.loads((qc_results / sample / f"{sample}.qc.json").read_text())
        row = table["data"][sample]
        assert set(row) == set(QC_COLUMNS) == set(table["headers"])
        assert row["spots_in_tissue"] == summary["spots_in_tissue"]
        assert row["spots_kept"] == summary["spots_kept"]
        assert row["spots_removed"] == summary["spots_removed"]["total"]
        assert row["median_umis"] == summary["umis_per_spot"]["median"]
        assert row["median_mt_percent"] == pytest.approx(100 * summary["mt_fraction"]["median"])
        assert spots["data"][sample] == {"spots_kept": summary["spots_kept"],
                                         "spots_removed": summary["spots_removed"]["total"]}
        assert row["spots_kept"] + row["spots_removed"] == row["spots_in_tissue"]


def test_command_line_writes_the_content(qc_results, tmp_path):
    outcome = CliRunner().invoke(main, ["multiqc-content", "--input-dir", str(qc_results), "--outdir", str(tmp_path)])

    assert outcome.exit_code == 0, outcome.output
    assert json.loads((tmp_path / TABLE_FILE).read_text())["id"] == "tissuemap_qc"


def test_flat_folder_and_hidden_folders(tmp_path):
    write_summary(tmp_path, "b")
    write_summary(tmp_path, "a.1", spots_kept=80, spots_removed={"total": 20})
    write_summary(tmp_path / ".mapping", "hidden")  # a runner's work folder is not results

    metrics = read_qc_metrics(tmp_path)

    assert list(metrics) == ["a.1", "b"]
    assert metrics["a.1"]["spots_kept"] == 80 and metrics["a.1"]["spots_removed"] == 20
    assert metrics["b"]["median_mt_percent"] == pytest.approx(12.5)


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda folder: None, "no NAME.qc.json file found"),
        (lambda folder: (folder / "x.qc.json").write_text("{not json"), "x.qc.json: not valid JSON"),
        (lambda folder: write_summary(folder, "x", sample="y"), "its 'sample' is not 'x'"),
        (lambda folder: write_summary(folder, "x", umis_per_spot={}), "no 'umis_per_spot.median'"),
        (lambda folder: write_summary(folder, "x", spots_kept="many"), "'spots_kept' is 'many', not a number"),
        (lambda folder: (write_summary(folder / "one", "x"), write_summary(folder / "two", "x")),
         "sample 'x' is also in"),
    ],
    ids=["none", "invalid-json", "renamed", "missing-value", "not-a-number", "duplicate"],
)
def test_user_errors_name_the_file(tmp_path, setup, message):
    setup(tmp_path)
    with pytest.raises(InputError, match=re.escape(message)):
        read_qc_metrics(tmp_path)


def test_command_line_error_is_one_line_and_writes_nothing(tmp_path):
    write_summary(tmp_path / "in", "x", genes_in_matrix=None)

    outcome = CliRunner().invoke(main, ["multiqc-content", "--input-dir", str(tmp_path / "in"),
                                        "--outdir", str(tmp_path / "out")])

    assert outcome.exit_code == 1
    assert len(outcome.output.strip().splitlines()) == 1
    assert "'genes_in_matrix' is None, not a number" in outcome.output
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
