"""`tissuemap run`: the steps it plans, and the whole pipeline end to end on small real data, with reuse on rerun."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from tissuemap.cli import main
from tissuemap.errors import InputError
from tissuemap.interruption import EXIT_INTERRUPTED
from tissuemap.runner import RunOptions, Step, exclusive_use, plan_steps
from tissuemap.runner.execution import checkpoint_folder

REFERENCE_OPTIONS = RunOptions(reference="ref.h5ad", labels_key="cell_type", n_cells_per_location=30)


@pytest.fixture
def three_samples(real_data, tmp_path):
    """A samplesheet of three samples (one Visium folder): a and b share slide s1; c has its own settings."""
    sheet = tmp_path / "samplesheet.csv"
    outs = real_data / "visium" / "breast_crop"
    sheet.write_text(
        "sample,spaceranger_dir,n_cells_per_location,detection_alpha,slide\n"
        f"a,{outs},,,s1\n"
        f"b,{outs},,,s1\n"
        f"c,{outs},12,200,\n"
    )
    return sheet


def steps_by_key(sheet, options, outdir):
    return {step.key: step for step in plan_steps(sheet, options, outdir)}


def option(step, name):
    return step.args[step.args.index(name) + 1]


def test_plan_runs_every_step_in_order(three_samples, tmp_path):
    steps = plan_steps(three_samples, REFERENCE_OPTIONS, tmp_path / "results")
    assert [step.key for step in steps] == [
        "plan", "qc/a", "qc/b", "qc/c", "filter-genes", "signatures", "map/a", "map/b", "map/c",
        "report/reference", "report/a", "report/b", "report/c", "summary",
    ]
    results = tmp_path / "results"
    steps = {step.key: step for step in steps}
    # the samplesheet's per-sample settings reach the map steps through the plan, not through qc
    assert steps["plan"].command_line().endswith(
        "--mapping-mode per-sample --n-cells-per-location 30 --reference ref.h5ad --labels-key cell_type "
        f"--outdir {results / 'pipeline_info'}")
    assert steps["qc/c"].args == ("--sample", "c", "--input", option(steps["qc/c"], "--input"), "--outdir",
                                  str(results / "c"))
    assert option(steps["signatures"], "--reference") == str(results / "reference" / "reference.filtered.h5ad")
    assert option(steps["map/a"], "--outdir") == str(results)
    assert option(steps["map/a"], "--plan") == str(results / "pipeline_info" / "mapping_plan.csv")
    assert option(steps["map/a"], "--signatures") == str(results / "reference" / "signatures.csv")
    assert steps["map/a"].needs == ("plan", "qc/a", "signatures")
    # options not given are left to each step's default
    assert "--max-epochs" not in steps["map/a"].args and "--device" not in steps["signatures"].args


def test_run_options_reach_the_training_steps(three_samples, tmp_path):
    options = RunOptions(reference="ref.h5ad", labels_key="cell_type", batch_key="batch", covariate_keys="tech",
                         regression_epochs=7, mapping_epochs=11, batch_size=500, n_cells_per_location=20, device="cpu",
                         seed=3)
    steps = steps_by_key(three_samples, options, tmp_path)
    assert steps["signatures"].command_line().endswith(
        "--labels-key cell_type --batch-key batch --covariate-keys tech --max-epochs 7 --device cpu --seed 3 "
        f"--checkpoint-dir {tmp_path / '.checkpoints' / 'signatures'} --resume --outdir {tmp_path / 'reference'}"
    )
    assert option(steps["plan"], "--n-cells-per-location") == "20"
    assert "--max-epochs 11 --batch-size 500 --device cpu --seed 3" in steps["map/c"].command_line()
    # each training step continues from its own checkpoint of an interrupted run
    assert option(steps["map/c"], "--checkpoint-dir") == str(tmp_path / ".checkpoints" / "map-c")
    assert "--resume" in steps["map/c"].args


def test_joint_and_slide_modes_map_samples_together(three_samples, tmp_path):
    joint = steps_by_key(three_samples, RunOptions(**{**REFERENCE_OPTIONS.__dict__, "mapping_mode": "joint"}), tmp_path)
    assert [key for key in joint if key.startswith("map/")] == ["map/a+b+c"]
    step = joint["map/a+b+c"]
    assert step.args[: 4] == ("--spatial", *(str(tmp_path / name / f"{name}.qc.h5ad") for name in "abc"))
    # the map step writes each sample's files into its folder itself
    assert option(step, "--outdir") == str(tmp_path)
    assert joint["report/b"].needs == ("qc/b", "map/a+b+c")

    by_slide = steps_by_key(three_samples, RunOptions(**{**REFERENCE_OPTIONS.__dict__, "mapping_mode": "slide"}),
                            tmp_path)
    assert [key for key in by_slide if key.startswith("map/")] == ["map/a+b", "map/c"]


def test_given_signatures_skip_the_reference_steps(three_samples, tmp_path):
    signatures = tmp_path / "signatures.csv"
    steps = steps_by_key(three_samples, RunOptions(signatures=signatures, n_cells_per_location=30), tmp_path / "results")
    assert not {"filter-genes", "signatures", "report/reference"} & set(steps)
    assert option(steps["map/a"], "--signatures") == str(signatures)
    assert steps["map/a"].inputs == (signatures,)


@pytest.mark.parametrize("options, message", [
    (RunOptions(), "give either --reference (with --labels-key; Nextflow: --labels_key) to learn signatures, or "
                   "--signatures"),
    (RunOptions(reference="r.h5ad", labels_key="t", signatures="s.csv"), "give either --reference"),
    (RunOptions(reference="r.h5ad"), "--reference needs --labels-key"),
])
def test_reference_or_signatures_is_required(three_samples, tmp_path, options, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        plan_steps(three_samples, options, tmp_path)


def test_cells_per_location_from_the_run_or_else_from_the_samplesheet(three_samples, tmp_path):
    with pytest.raises(InputError, match=r"--n-cells-per-location \(Nextflow: --n_cells_per_location\): sample\(s\) a, b have "):
        plan_steps(three_samples, RunOptions(signatures="s.csv"), tmp_path)
    only_c = tmp_path / "c.csv"
    only_c.write_text(three_samples.read_text().splitlines()[0] + "\n" + three_samples.read_text().splitlines()[3])
    steps = steps_by_key(only_c, RunOptions(signatures="s.csv"), tmp_path)
    # every sample has its own value: the run needs none, and passes none
    assert "--n-cells-per-location" not in steps["plan"].args + steps["map/c"].args


# --- end to end: breast_crop twice (jointly mapped) with the lymph node reference, a few training steps ---

SAMPLES = ("breast_a", "breast_b")
STATS = ("means", "stds", "q05", "q95")


def run_pipeline(*args):
    result = CliRunner().invoke(main, ["run", *map(str, args)])
    assert result.exit_code == 0, result.output
    return result


def step_status(results):
    return {step["key"]: step["status"] for step in json.loads((results / "pipeline_info" / "steps.json").read_text())}


def file_stats(results):
    return {str(path.relative_to(results)): path.stat().st_mtime_ns for path in results.rglob("*") if path.is_file()
            and "pipeline_info" not in path.parts}


@pytest.fixture(scope="module")
def results(real_data, tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    sheet = folder / "samplesheet.csv"
    outs = real_data / "visium" / "breast_crop"
    sheet.write_text(f"sample,spaceranger_dir,n_cells_per_location\nbreast_a,{outs},\nbreast_b,{outs},20\n")
    run_pipeline("--input", sheet, "--reference", real_data / "reference" / "lymph_node_330cells.h5ad",
                 "--labels-key", "cell_type", "--n-cells-per-location", 30, "--regression-epochs", 2,
                 "--mapping-epochs", 3, "--mapping-mode", "joint", "--seed", 1, "--outdir", folder / "results")
    return folder / "results"


def test_run_writes_the_documented_layout(results):
    def names(folder):
        return sorted(path.name for path in folder.iterdir())

    assert names(results) == ["breast_a", "breast_b", "pipeline_info", "reference", "summary.html"]
    assert names(results / "reference") == sorted([
        "signatures.csv", "reference.signatures.h5ad", "reference.signatures_history.json",
        "reference.signatures_elbo.png", "reference.signatures_obs_vs_expected.png",
        "reference.signatures_vs_average.png", "reference.filtered.h5ad", "reference.filter_genes.png",
        "reference.filter_genes.json", "reference.report.html",
    ])
    for sample in SAMPLES:
        assert names(results / sample) == sorted(f"{sample}.{suffix}" for suffix in [
            "qc.h5ad", "qc.json", "qc_histograms.png", "qc_spatial.png", "abundance.h5ad", "cell_abundance_q05.csv",
            "cell_abundance_mean.csv", "cell_abundance_spatial.png", "mapping_history.json", "mapping_elbo.png",
            "mapping_observed_vs_expected.png", "mapping_cells_vs_counts.png", "report.html",
        ])
    assert names(results / "pipeline_info") == ["mapping_plan.csv", "params.json", "steps.json", "versions.json"]


def test_signatures_and_abundance_hold_every_cell_type(results, lymph_node_types):
    signatures = pd.read_csv(results / "reference" / "signatures.csv", index_col=0)
    assert list(signatures.columns) == lymph_node_types
    reference = ad.read_h5ad(results / "reference" / "reference.signatures.h5ad")
    assert list(reference.varm["means_per_cluster_mu_fg"].columns) == [
        f"means_per_cluster_mu_fg_{name}" for name in lymph_node_types]
    assert list(reference.uns["mod"]["factor_names"]) == lymph_node_types

    for sample, n_cells in zip(SAMPLES, (30, 20)):
        adata = ad.read_h5ad(results / sample / f"{sample}.abundance.h5ad")
        assert adata.n_obs == 338
        assert list(adata.uns["mod"]["factor_names"]) == lymph_node_types
        for stat in STATS:
            table = adata.obsm[f"{stat}_cell_abundance_w_sf"]
            assert list(table.columns) == [f"{stat}cell_abundance_w_sf_{name}" for name in lymph_node_types]
            assert (table.to_numpy() >= 0).all()
        assert adata.obsm["spatial"].shape == (338, 2) and "images" in adata.uns["spatial"][sample]
        # the samplesheet's value for breast_b overrides the run's
        assert adata.uns["mod"]["n_cells_per_location"] == n_cells
        assert list(adata.uns["mod"]["samples_fitted_together"]) == list(SAMPLES)
        for label, stat in (("q05", "q05"), ("mean", "means")):
            table = pd.read_csv(results / sample / f"{sample}.cell_abundance_{label}.csv", index_col=0)
            assert table.shape == (338, 11) and list(table.columns) == lymph_node_types
            assert list(table.index) == list(adata.obs_names)
            np.testing.assert_allclose(table.to_numpy(), adata.obsm[f"{stat}_cell_abundance_w_sf"].to_numpy(),
                                       rtol=1e-5)


@pytest.mark.parametrize("page", ["breast_a/breast_a.report.html", "breast_b/breast_b.report.html",
                                  "reference/reference.report.html", "summary.html"])
def test_every_report_names_every_cell_type_and_embeds_its_images(results, page, lymph_node_types,
                                                                   assert_self_contained, cell_texts):
    text = (results / page).read_text()
    assert_self_contained(text)
    assert set(lymph_node_types) <= cell_texts(text) | cell_texts(text, "th")


def test_summary_links_every_sample_report(results):
    text = (results / "summary.html").read_text()
    for sample in SAMPLES:
        assert f'<a href="{sample}/{sample}.report.html">{sample}</a>' in text
        assert (results / sample / f"{sample}.report.html").is_file()


def test_pipeline_info_records_parameters_versions_and_steps(results):
    info = results / "pipeline_info"
    parameters = json.loads((info / "params.json").read_text())
    assert parameters["mapping_mode"] == "joint" and parameters["mapping_epochs"] == 3
    versions = json.loads((info / "versions.json").read_text())
    assert {"python", "tissuemap", "torch", "pyro-ppl", "scanpy", "anndata", "jinja2", "click"} <= set(versions)
    steps = json.loads((info / "steps.json").read_text())
    assert [step["key"] for step in steps] == [
        "plan", "qc/breast_a", "qc/breast_b", "filter-genes", "signatures", "map/breast_a+breast_b",
        "report/reference", "report/breast_a", "report/breast_b", "summary"]
    assert all(step["status"] == "ran" and step["seconds"] > 0 for step in steps)
    assert (info / "mapping_plan.csv").read_text().splitlines() == [
        "group,sample,slide,n_cells_per_location,detection_alpha",
        "joint,breast_a,breast_a,30.0,20.0", "joint,breast_b,breast_b,20.0,20.0"]
    mapping = steps[5]
    assert mapping["command"].startswith(f"tissuemap map --spatial {results}/breast_a/breast_a.qc.h5ad ")
    assert "breast_b/breast_b.abundance.h5ad" in mapping["outputs"]


def test_rerun_reuses_finished_steps_and_force_runs_them_again(real_data, results, tmp_path):
    sheet = tmp_path / "samplesheet.csv"
    sheet.write_text(f"sample,spaceranger_dir\nbreast,{real_data / 'visium' / 'breast_crop'}\n")
    rerun = tmp_path / "results"
    base = ["--input", sheet, "--signatures", results / "reference" / "signatures.csv", "--n-cells-per-location", 30,
            "--outdir", rerun]
    args = [*base, "--mapping-epochs", 2]
    run_pipeline(*args)
    everything = {"plan", "qc/breast", "map/breast", "report/breast", "summary"}
    assert step_status(rerun) == dict.fromkeys(everything, "ran")
    first = file_stats(rerun)

    output = run_pipeline(*args).output
    assert step_status(rerun) == dict.fromkeys(everything, "reused")
    assert "breast: mapping: reused" in output
    # stderr is not a terminal here, as in a log file: plain progress lines, no redrawn bar
    assert "\r" not in output and "tissuemap run: 5/5 steps (100%)" in output
    assert file_stats(rerun) == first

    # another mapping option: the mapping and what reads it run again, QC is reused
    run_pipeline(*base, "--mapping-epochs", 3)
    assert step_status(rerun) == {"plan": "reused", "qc/breast": "reused", "map/breast": "ran", "report/breast": "ran",
                                  "summary": "ran"}
    after_mapping = file_stats(rerun)
    assert after_mapping["breast/breast.qc.h5ad"] == first["breast/breast.qc.h5ad"]
    assert after_mapping["breast/breast.abundance.h5ad"] != first["breast/breast.abundance.h5ad"]

    run_pipeline(*base, "--mapping-epochs", 3, "--force")
    assert step_status(rerun) == dict.fromkeys(everything, "ran")
    assert all(file_stats(rerun)[name] != stamp for name, stamp in after_mapping.items())


def test_a_failed_step_leaves_no_partial_outputs(real_data, tmp_path):
    sheet = tmp_path / "samplesheet.csv"
    outs = real_data / "visium" / "breast_crop"
    sheet.write_text(f"sample,spaceranger_dir\nbreast_a,{outs}\nbreast_b,{outs}\n")
    unrelated = tmp_path / "signatures.csv"
    pd.DataFrame({"T": [1.0, 2.0]}, index=["NOT_A_GENE_1", "NOT_A_GENE_2"]).rename_axis("gene").to_csv(unrelated)
    results = tmp_path / "results"
    result = CliRunner().invoke(main, ["run", "--input", str(sheet), "--signatures", str(unrelated),
                                       "--n-cells-per-location", "30", "--mapping-mode", "joint",
                                       "--outdir", str(results)])
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1].startswith("Error: ")
    # the plan and QC finished and are kept (and recorded for reuse); the mapping left nothing
    for sample in ("breast_a", "breast_b"):
        assert sorted(path.name for path in (results / sample).iterdir()) == [
            f"{sample}.qc.h5ad", f"{sample}.qc.json", f"{sample}.qc_histograms.png", f"{sample}.qc_spatial.png"]
    assert sorted(path.name for path in results.iterdir()) == ["breast_a", "breast_b", "pipeline_info"]
    assert step_status(results) == {"plan": "ran", "qc/breast_a": "ran", "qc/breast_b": "ran"}


def one_sample_run(real_data, results, tmp_path, outdir):
    """`tissuemap run` arguments: one sample, the signatures of ``results``, 300 mapping steps."""
    sheet = tmp_path / "samplesheet.csv"
    sheet.write_text(f"sample,spaceranger_dir\nbreast,{real_data / 'visium' / 'breast_crop'}\n")
    return ["run", "--input", str(sheet), "--signatures", str(results / "reference" / "signatures.csv"),
            "--n-cells-per-location", "30", "--mapping-epochs", "300", "--device", "cpu", "--outdir", str(outdir)]


def run_in_subprocess(command, log, until=None):
    """Run ``tissuemap COMMAND`` on one thread with its log in ``log``; with ``until`` (a pattern), send SIGTERM as
    soon as the log matches it. Returns the exit code and the log."""
    with open(log, "w") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "tissuemap", *command], stderr=stderr,
                                   env={**os.environ, "OMP_NUM_THREADS": "1"})
        deadline = time.monotonic() + 300
        while until and not re.search(until, log.read_text()) and process.poll() is None \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        if until:
            process.send_signal(signal.SIGTERM)
        process.wait(timeout=300)
    return process.returncode, log.read_text()


def test_an_interrupted_run_continues_its_training_step_from_the_checkpoint(real_data, results, tmp_path):
    """SIGTERM while `tissuemap run` trains the mapping: exit 75 with the mapping's state saved; the same command
    again continues from it and gives the outputs of an uninterrupted run, bit for bit (each run a process of its
    own on one thread: the same thread count, as bitwise equality needs)."""
    outdir = tmp_path / "results"
    command = one_sample_run(real_data, results, tmp_path, outdir)
    # the mapping's first progress line ("mapping: 30/300 steps (10%), ...") shows once training has begun
    returncode, log = run_in_subprocess(command, tmp_path / "interrupted.log", until=r"mapping: [\d,]+/[\d,]+ steps")
    assert returncode == EXIT_INTERRUPTED, log[-2000:]
    assert "step breast: mapping: SIGTERM: training stopped after " in log
    checkpoint = outdir / ".checkpoints" / "map-breast" / ".breast.map.ckpt.pt"
    assert checkpoint.exists() and not (outdir / ".tissuemap-run.lock").exists()
    assert not (outdir / "breast" / "breast.cell_abundance_q05.csv").exists()

    returncode, log = run_in_subprocess(command, tmp_path / "resumed.log")
    assert returncode == 0, log[-2000:]
    assert "breast: QC: reused" in log
    assert "step breast: mapping: continuing from the checkpoint of its interrupted run" in log
    assert not (outdir / ".checkpoints").exists()
    whole = tmp_path / "whole"
    returncode, log = run_in_subprocess(one_sample_run(real_data, results, tmp_path, whole), tmp_path / "whole.log")
    assert returncode == 0, log[-2000:]
    for table in ("breast.cell_abundance_q05.csv", "breast.cell_abundance_mean.csv"):
        assert (outdir / "breast" / table).read_bytes() == (whole / "breast" / table).read_bytes()
    assert sorted(path.name for path in outdir.iterdir()) == sorted(path.name for path in whole.iterdir())


def test_a_second_run_into_a_folder_in_use_is_refused_and_a_killed_runs_lock_is_not(real_data, results, tmp_path):
    outdir = tmp_path / "results"
    outdir.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from tissuemap.runner import exclusive_use\n"
         f"with exclusive_use(Path({str(outdir)!r})):\n    print('locked', flush=True); time.sleep(300)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        result = CliRunner().invoke(main, one_sample_run(real_data, results, tmp_path, outdir))
        assert result.exit_code == 1
        assert result.output.splitlines() == [
            f"Error: {outdir}: another tissuemap run (process {holder.pid}) is writing to this folder; wait for it to "
            "end or choose another --outdir"]
        assert sorted(path.name for path in outdir.iterdir()) == [".tissuemap-run.lock"]  # nothing else touched
    finally:
        holder.send_signal(signal.SIGKILL)  # a crash: the lock file stays, its lock goes with the process
        holder.wait()
    with exclusive_use(outdir):
        pass


@pytest.mark.parametrize("change, kept", [({}, True), ({"fresh": "--force"}, False),
                                          ({"fresh": "step qc/a ran again"}, False), ({"inputs": {"x": "other"}}, False)])
def test_an_interrupted_steps_checkpoint_is_used_only_under_the_reuse_rule(tmp_path, change, kept):
    """A rerun continues from the checkpoint of the same command line with the same inputs, every step it needs
    reused; --force, a rerun earlier step or other inputs start it over."""
    folder = tmp_path / ".checkpoints" / "map-a"
    step = Step("map/a", "a: mapping", ("map",), ("--checkpoint-dir", str(folder), "--resume", "--outdir", "x"))
    with pytest.raises(RuntimeError), checkpoint_folder(step, {"x": "1"}, None):
        (folder / ".a.map.ckpt.pt").write_bytes(b"state")  # an interrupted attempt
        raise RuntimeError
    arguments = {"inputs": {"x": "1"}, "fresh": None, **change}
    with checkpoint_folder(step, arguments["inputs"], arguments["fresh"]):
        assert (folder / ".a.map.ckpt.pt").exists() == kept
        (folder / ".a.map.ckpt.pt").unlink(missing_ok=True)  # the step finishes: it deletes its checkpoint
    # nothing is left
    assert not (tmp_path / ".checkpoints").exists()
