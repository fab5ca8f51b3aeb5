"""`tissuemap plan`: the samples fitted together and each sample's settings, decided once for both engines."""

from pathlib import Path

import pytest
from click.testing import CliRunner

from tissuemap.cli import main
from tissuemap.errors import InputError
from tissuemap.plan import mapping_groups, read_plan, sample_settings
from tissuemap.samplesheet import Sample

SAMPLES = [
    Sample("a", Path("a"), "h5ad", slide="s1"),
    Sample("b", Path("b"), "h5ad", slide="s1"),
    Sample("c", Path("c"), "h5ad", n_cells_per_location=12.0, detection_alpha=200.0),
]


def test_groups_of_the_three_modes():
    assert mapping_groups(SAMPLES, "per-sample") == {"a": ["a"], "b": ["b"], "c": ["c"]}
    assert mapping_groups(SAMPLES, "joint") == {"joint": ["a", "b", "c"]}
    # a sample without a slide is a slide of its own
    assert mapping_groups(SAMPLES, "slide") == {"slide-s1": ["a", "b"], "slide-c": ["c"]}
    with pytest.raises(InputError, match="--mapping-mode: 'batch' is not one of per-sample, joint, slide"):
        mapping_groups(SAMPLES, "batch")


def test_a_samples_own_settings_win_over_the_runs():
    settings = sample_settings(SAMPLES, 30.0, 20.0)
    assert settings["a"] == {"slide": "s1", "n_cells_per_location": 30.0, "detection_alpha": 20.0}
    assert settings["c"] == {"slide": "c", "n_cells_per_location": 12.0, "detection_alpha": 200.0}
    # every sample has its own value: the run needs none
    assert sample_settings(SAMPLES[2:], None, 5.0)["c"]["detection_alpha"] == 200.0
    with pytest.raises(InputError, match=r"sample\(s\) a, b have no n_cells_per_location in the samplesheet"):
        sample_settings(SAMPLES, None, 20.0)


def test_plan_command_writes_the_plan_without_needing_the_sample_files(tmp_path):
    # in a Nextflow task the samples' folders are not there: the plan reads only names, slides and settings
    sheet = tmp_path / "samplesheet.csv"
    sheet.write_text("sample,h5ad,n_cells_per_location,slide\nb,gone/b.h5ad,,s1\na,gone/a.h5ad,7,s1\nc,gone/c.h5ad,,\n")
    result = CliRunner().invoke(main, ["plan", "--input", str(sheet), "--mapping-mode", "slide", "--signatures",
                                       "s.csv", "--n-cells-per-location", "30", "--outdir", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "mapping_plan.csv").read_text().splitlines() == [
        "group,sample,slide,n_cells_per_location,detection_alpha",
        "slide-s1,b,s1,30.0,20.0", "slide-s1,a,s1,7.0,20.0", "slide-c,c,c,30.0,20.0"]
    # the samplesheet's order is the order the samples of a group are fitted in
    assert [name for name, row in sorted(read_plan(tmp_path / "out" / "mapping_plan.csv").items(),
                                         key=lambda item: item[1]["order"])] == ["b", "a", "c"]


def test_plan_errors_are_one_line_and_write_nothing(tmp_path):
    sheet = tmp_path / "samplesheet.csv"
    sheet.write_text("sample,h5ad\na,a.h5ad\n")
    result = CliRunner().invoke(main, ["plan", "--input", str(sheet), "--signatures", "s.csv",
                                       "--outdir", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert result.output.strip() == (
        "Error: --n-cells-per-location (Nextflow: --n_cells_per_location): sample(s) a have no n_cells_per_location "
        "in the samplesheet; give the expected cells per spot (tissue dependent; the cell2location tutorial uses 30 "
        "for lymph node)")
    assert not (tmp_path / "out").exists()
    (tmp_path / "not_a_plan.csv").write_text("sample,x\na,1\n")
    with pytest.raises(InputError, match="not_a_plan.csv: not a mapping plan"):
        read_plan(tmp_path / "not_a_plan.csv")


def test_plan_checks_the_signature_source_as_run_does(tmp_path):
    sheet = tmp_path / "samplesheet.csv"
    sheet.write_text("sample,h5ad,n_cells_per_location\na,a.h5ad,8\n")
    base = ["plan", "--input", str(sheet), "--outdir", str(tmp_path / "out")]
    both = CliRunner().invoke(main, [*base, "--reference", "r.h5ad", "--labels-key", "t", "--signatures", "s.csv"])
    assert both.exit_code == 1 and both.output.strip() == (
        "Error: give either --reference (with --labels-key; Nextflow: --labels_key) to learn signatures, or "
        "--signatures: --signatures skips learning them (-profile test drops its reference then)")
    no_labels = CliRunner().invoke(main, [*base, "--reference", "r.h5ad"])
    assert no_labels.exit_code == 1 and "--reference needs --labels-key (Nextflow: --labels_key)" in no_labels.output
    assert CliRunner().invoke(main, [*base, "--signatures", "s.csv"]).exit_code == 0
