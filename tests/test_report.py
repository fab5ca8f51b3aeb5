"""`tissuemap report`: one self-contained HTML file per sample, for the reference and for the run.

The inputs are real outputs: `filter-genes` and `signatures --method mean` on the lymph node reference, `qc` and a
few steps of `map` on breast_crop, with some cell types renamed to names that HTML and matplotlib must escape.
"""

import io
import json
import re

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from tissuemap.cli import main
from tissuemap.convergence import judge_convergence
from tissuemap.report.figures import (
    OVERLAY_COLOURS,
    OVERLAY_TYPES,
    TissueView,
    colour_scale_limit,
    overlay_map,
    overlay_types,
    tissue_view,
)
from tissuemap.report.inputs import abundance_table, cell_type_proportions, read_abundance

SAMPLE = "breast"
MAPPING_STEPS = 3


@pytest.fixture(scope="module")
def reference_folder(make_reference_folder, tmp_path_factory):
    return make_reference_folder(tmp_path_factory.mktemp("reference"))


@pytest.fixture(scope="module")
def sample_folder(make_sample_folder, reference_folder, tmp_path_factory):
    return make_sample_folder(reference_folder, tmp_path_factory.mktemp("sample"), SAMPLE, MAPPING_STEPS)


@pytest.fixture(scope="module")
def sample_page(sample_folder, invoke, tmp_path_factory):
    outdir = tmp_path_factory.mktemp("sample_report")
    invoke("report", "sample", "--sample", SAMPLE, "--input-dir", sample_folder, "--outdir", outdir)
    assert [path.name for path in outdir.iterdir()] == [f"{SAMPLE}.report.html"]
    return (outdir / f"{SAMPLE}.report.html").read_text()


def test_sample_report_is_self_contained_and_embeds_every_plot(sample_page, assert_self_contained, image_sources):
    assert_self_contained(sample_page)
    # the qc step's 2 plots, the map step's 3 QC plots, and the report's counts-cells-detection maps, abundance,
    # overlay, dominant type and proportions
    assert len(image_sources(sample_page)) == 10
    for title in ("Spot QC metrics", "Mapping training history", "Observed against expected counts",
                  "Cells, counts and detection", "Counts, cells and detection over the tissue",
                  "Cells of each type per spot", "The 6 most abundant cell types together",
                  "Dominant cell type per spot", "Cell-type proportions"):
        assert f"<strong>{title}.</strong>" in sample_page
    # a Visium sample's locations are spots (a Visium HD one's bins: tests/test_visium_hd.py)
    assert "<h2>Spot QC</h2>" in sample_page and "spots mapped" in sample_page and " bins" not in sample_page


def test_overlay_shows_the_most_abundant_types_in_distinct_colours(sample_folder):
    adata = read_abundance(sample_folder / f"{SAMPLE}.abundance.h5ad")
    abundance = abundance_table(adata)
    chosen = overlay_types(abundance)
    assert len(chosen) == OVERLAY_TYPES and len(set(OVERLAY_COLOURS)) == OVERLAY_TYPES
    assert abundance[chosen].sum().min() >= abundance.drop(columns=chosen).sum().max()
    # the overlay of each type alone shows its colour where it is abundant and the tissue where it is absent
    view = tissue_view(adata, SAMPLE)
    empty_view = TissueView(view.xy, view.radius, None, view.xlim, view.ylim)
    only = pd.DataFrame({"a": np.r_[np.zeros(len(abundance) - 1), 5.0]}, index=abundance.index)
    picture = plt.imread(io.BytesIO(overlay_map(only, empty_view, ["a"])))
    red = np.array(plt.matplotlib.colors.to_rgb(OVERLAY_COLOURS[0]))
    assert (np.abs(picture[..., :3] - red).max(axis=-1) < 0.02).any()


def test_sample_report_names_every_cell_type_escaped(sample_page, renamed_cell_types, cell_texts):
    assert set(renamed_cell_types) <= cell_texts(sample_page)
    assert "<naive>" not in sample_page and '"CD4"' not in sample_page


def test_sample_report_shows_qc_mapping_numbers_and_versions(sample_page, sample_folder):
    qc = json.loads((sample_folder / f"{SAMPLE}.qc.json").read_text())
    assert f"<td>{qc['spots_kept']:,}</td>" in sample_page
    assert '<th scope="row">map.n_cells_per_location</th><td>30</td>' in sample_page
    assert f'<th scope="row">training steps</th><td>{MAPPING_STEPS}</td>' in sample_page
    assert '<th scope="row">torch</th>' in sample_page
    history = json.loads((sample_folder / f"{SAMPLE}.mapping_history.json").read_text())
    assert f'<th scope="row">genes shared with the signatures</th><td>{history["n_genes"]:,}</td>' in sample_page


def test_missing_mapping_output_is_a_one_line_error(sample_folder, tmp_path):
    for name in (f"{SAMPLE}.qc.json", f"{SAMPLE}.mapping_history.json"):
        (tmp_path / name).write_bytes((sample_folder / name).read_bytes())
    result = CliRunner().invoke(main, ["report", "sample", "--sample", SAMPLE, "--input-dir", str(tmp_path),
                                       "--outdir", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        (f"Error: {tmp_path / f'{SAMPLE}.abundance.h5ad'}: not found; run `tissuemap map` first, or give the "
         "--input-dir that holds it")
    ]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_colour_scale_ends_at_the_99_2_percent_quantile():
    values = np.arange(1001, dtype=float)
    assert colour_scale_limit(values) == pytest.approx(992)
    # a type absent from nearly every spot still gets a scale up to its largest value
    assert colour_scale_limit(np.r_[np.zeros(999), 5.0]) == 5.0
    assert colour_scale_limit(np.zeros(10)) == 1.0


def test_proportions_sum_to_one_per_spot_and_empty_spots_stay_empty():
    abundance = pd.DataFrame({"a": [1.0, 0.0, 3.0], "b": [3.0, 0.0, 1.0]})
    proportions = cell_type_proportions(abundance)
    np.testing.assert_allclose(proportions.to_numpy(), [[0.25, 0.75], [0, 0], [0.75, 0.25]])


def test_reference_report_numbers_types_and_plots(reference_folder, invoke, assert_self_contained, image_sources,
                                                  lymph_node_types, tmp_path):
    invoke("report", "reference", "--input-dir", reference_folder, "--outdir", tmp_path)
    page = (tmp_path / "reference.report.html").read_text()
    assert_self_contained(page)
    # the gene filter's plot and, for --method mean, the observed-vs-expected plot (no training, no ELBO)
    assert len(image_sources(page)) == 2
    gene_filter = json.loads((reference_folder / "reference.filter_genes.json").read_text())
    assert f"{gene_filter['n_genes_kept']:,} of {gene_filter['n_genes_in']:,}" in page
    for name in lymph_node_types:
        assert f"<td>{name}</td><td>30</td>" in page
    # the most specific genes of a type are its known markers
    plasma_row = re.search(r"<tr><td>B_Plasma</td>.*?</tr>", page).group(0)
    assert re.search(r"<td>(IG[HKL]|JCHAIN)[^<]*</td></tr>", plasma_row), plasma_row
    cd8_row = re.search(r"<tr><td>T_CD8</td>.*?</tr>", page).group(0)
    assert re.search(r"CD8A|CD8B", cd8_row), cd8_row


def test_reference_report_without_signatures_names_the_step(reference_folder, tmp_path):
    (tmp_path / "reference.filter_genes.json").write_bytes((reference_folder / "reference.filter_genes.json").read_bytes())
    result = CliRunner().invoke(main, ["report", "reference", "--input-dir", str(tmp_path), "--outdir", str(tmp_path)])
    assert result.exit_code == 1
    assert "reference.signatures_history.json: not found; run `tissuemap signatures` first" in result.output


def test_summary_rows_links_and_heat_map(sample_folder, invoke, assert_self_contained, image_sources, cell_texts,
                                         renamed_cell_types, tmp_path):
    results = tmp_path / "results"
    (results / SAMPLE).mkdir(parents=True)
    for path in sample_folder.iterdir():
        (results / SAMPLE / path.name).write_bytes(path.read_bytes())
    # a second sample that is QC'd but not mapped yet
    (results / "unmapped").mkdir()
    qc = json.loads((sample_folder / f"{SAMPLE}.qc.json").read_text())
    (results / "unmapped" / "unmapped.qc.json").write_text(json.dumps({**qc, "sample": "unmapped", "spots_kept": 7}))
    invoke("report", "summary", "--input-dir", results, "--outdir", results)
    page = (results / "summary.html").read_text()
    assert_self_contained(page)
    assert len(image_sources(page)) == 1
    assert f'<a href="{SAMPLE}/{SAMPLE}.report.html">{SAMPLE}</a>' in page
    assert "<td>unmapped</td><td>7</td>" in page and "not mapped" in page
    assert set(renamed_cell_types) <= cell_texts(page, "th")
    assert "Samples: 2, mapped: 1" in page

    invoke("report", "summary", "--input-dir", results, "--outdir", tmp_path / "flat",
           "--report-link", "{sample}.report.html")
    assert f'<a href="{SAMPLE}.report.html">' in (tmp_path / "flat" / "summary.html").read_text()

    # --samples: the samples of this run only, not a folder left from an earlier one
    invoke("report", "summary", "--input-dir", results, "--outdir", tmp_path / "only", "--samples", SAMPLE)
    assert "Samples: 1, mapped: 1" in (tmp_path / "only" / "summary.html").read_text()
    result = CliRunner().invoke(main, ["report", "summary", "--input-dir", str(results), "--outdir", str(tmp_path),
                                       "--samples", f"{SAMPLE},gone"])
    assert result.exit_code == 1 and "no gone.qc.json or gone.abundance.h5ad found" in result.output


def with_history(source, folder, name, update):
    """``folder``: a copy of the files of ``source`` with the JSON file ``name`` updated by ``update``."""
    folder.mkdir(parents=True)
    for path in source.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    history = json.loads((folder / name).read_text())
    (folder / name).write_text(json.dumps({**history, **update}))
    return folder


def test_unfinished_training_is_a_visible_notice_in_every_report(sample_folder, reference_folder, sample_page,
                                                                  invoke, tmp_path):
    assert 'class="notice"' not in sample_page  # 3 steps: too few to judge, no notice
    falling = np.linspace(2e6, 1e6, 100)
    results = tmp_path / "results"
    for folder, name, what, run_option in (
            (results / SAMPLE, f"{SAMPLE}.mapping_history.json", "Mapping", "--mapping-epochs"),
            (results / "reference", "reference.signatures_history.json", "The signature regression",
             "--regression-epochs")):
        source = sample_folder if folder.name == SAMPLE else reference_folder
        convergence = judge_convergence(falling, "--max-epochs", run_option)
        with_history(source, folder, name, {"converged": False, "convergence": convergence})
    invoke("report", "sample", "--sample", SAMPLE, "--input-dir", results / SAMPLE, "--outdir", tmp_path)
    invoke("report", "reference", "--input-dir", results / "reference", "--outdir", tmp_path)
    invoke("report", "summary", "--input-dir", results, "--outdir", tmp_path)
    advice = "the loss was still falling at the last step: train longer, e.g. --max-epochs 300"
    for page, whats in (("breast.report.html", ["Mapping"]), ("reference.report.html", ["The signature regression"]),
                        ("summary.html", ["The signature regression", f"The mapping of {SAMPLE}"])):
        text = (tmp_path / page).read_text()
        for what in whats:
            assert re.search(rf'<p class="notice" role="alert"><strong>Training had not levelled off.</strong> '
                             rf'{what} had not converged: {advice}', text), (page, what)
    assert '<th scope="row">loss levelled off</th><td>no: train longer</td>' in (
        tmp_path / "breast.report.html").read_text()


def test_summary_without_samples_names_the_steps(tmp_path):
    result = CliRunner().invoke(main, ["report", "summary", "--input-dir", str(tmp_path), "--outdir", str(tmp_path)])
    assert result.exit_code == 1
    assert "no NAME.qc.json or NAME.abundance.h5ad found; run `tissuemap qc` and `tissuemap map` first" in result.output
