"""Input mistakes not covered by the step tests: each one is a single `Error: ...` line naming what is wrong and
what to do, a non-zero exit, no traceback, and no file written to the output folder."""

import shutil

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from click.testing import CliRunner

from tissuemap.cli import main
from tissuemap.io import read_spatial_sample

MOUSE_BRAIN = "visium/mouse_brain_100genes"
LYMPH_NODE = "reference/lymph_node_330cells.h5ad"


@pytest.fixture(scope="module")
def inputs(real_data, tmp_path_factory):
    """Good inputs to spoil: a Space Ranger outs/ folder, the same sample as .h5ad and QC'd, a signatures table of
    its genes, and a single-cell reference (human lymph node: another species than the mouse brain sample)."""
    folder = tmp_path_factory.mktemp("inputs")
    shutil.copytree(real_data / MOUSE_BRAIN, folder / "outs")
    sample = read_spatial_sample(folder / "outs", "brain")
    sample.write_h5ad(folder / "brain.h5ad")
    result = CliRunner().invoke(main, ["qc", "--sample", "brain", "--input", str(folder / "outs"),
                                       "--outdir", str(folder / "qc")])
    assert result.exit_code == 0, result.output
    rng = np.random.default_rng(0)
    pd.DataFrame(rng.gamma(1.0, 1.0, size=(sample.n_vars, 3)), index=sample.var_names,
                 columns=["A", "B", "C"]).to_csv(folder / "signatures.csv")
    return folder


def positions_missing_barcodes(folder, tmp_path):
    outs = tmp_path / "outs"
    shutil.copytree(folder / "outs", outs)
    positions = outs / "spatial" / "tissue_positions_list.csv"
    lines = positions.read_text().splitlines(keepends=True)
    in_tissue = [line for line in lines if line.split(",")[1] == "1"]
    positions.write_text("".join(line for line in lines if line not in in_tissue[:20]))
    return ["qc", "--sample", "brain", "--input", str(outs)]


def no_spot_after_qc(folder, tmp_path):
    return ["qc", "--sample", "brain", "--input", str(folder / "outs"), "--min-counts", "1000000000"]


def spoiled_h5ad(change):
    def command(folder, tmp_path):
        adata = ad.read_h5ad(folder / "brain.h5ad")
        change(adata)
        adata.write_h5ad(tmp_path / "spoiled.h5ad")
        return ["qc", "--sample", "brain", "--input", str(tmp_path / "spoiled.h5ad")]

    return command


def normalise(adata):
    totals = np.asarray(adata.X.sum(axis=1)).ravel()
    adata.X = sp.csr_matrix(adata.X.multiply(1e4 / np.maximum(totals, 1)[:, None]))


def set_first_count(value):
    def change(adata):
        adata.X = sp.csr_matrix(adata.X)
        adata.X.data[0] = value

    return change


def drop_gene_names(adata):
    del adata.var["SYMBOL"]
    adata.var_names = [str(g) for g in range(adata.n_vars)]


def map_with(signatures=None, extra=()):
    def command(folder, tmp_path):
        path = folder / "signatures.csv"
        if signatures is not None:
            path = tmp_path / "signatures.csv"
            signatures(folder).to_csv(path)
        return ["map", "--spatial", str(folder / "qc" / "brain.qc.h5ad"), "--signatures", str(path),
                "--n-cells-per-location", "5", "--max-epochs", "2", "--device", "cpu", "--min-shared-genes", "10",
                *extra]

    return command


def signatures_with(reference_change=None, extra=()):
    def command(folder, tmp_path):
        path = folder.parent / "lymph_node.h5ad"
        if reference_change is not None:
            adata = ad.read_h5ad(path)
            adata = reference_change(adata)
            path = tmp_path / "reference.h5ad"
            adata.write_h5ad(path)
        return ["signatures", "--reference", str(path), "--labels-key", "cell_type", "--max-epochs", "1", *extra]

    return command


CASES = {
    "positions lack barcodes of the matrix": (positions_missing_barcodes, ["tissue_positions_list.csv",
                                                                            "barcodes", "same Space Ranger run"]),
    "no spot left after QC": (no_spot_after_qc, ["fewer than 1000000000 UMIs", "lower --min-counts"]),
    "normalised counts": (spoiled_h5ad(normalise), ["spoiled.h5ad", "non-integer", "raw counts"]),
    "a negative count": (spoiled_h5ad(set_first_count(-2.0)), ["spoiled.h5ad", "negative", "raw counts"]),
    "a NaN count": (spoiled_h5ad(set_first_count(np.nan)), ["spoiled.h5ad", "NaN", "raw counts"]),
    "no gene names": (spoiled_h5ad(drop_gene_names), ["spoiled.h5ad", "var_names", "gene"]),
    "signatures of another species": (
        map_with(lambda folder: pd.read_csv(folder / "signatures.csv", index_col=0).set_axis(
            [f"ENSG{i:011d}" for i in range(100)], axis=0)),
        ["signatures.csv", "share"]),
    "map --device cuda without a GPU": (map_with(extra=["--device", "cuda"]), ["--device cuda", "--device cpu"]),
    "map with --checkpoint-every negative": (map_with(extra=["--checkpoint-every", "-1"]), ["--checkpoint-every"]),
    "signatures of a single cell type": (
        signatures_with(lambda adata: adata[adata.obs["cell_type"] == "B"].copy()),
        ["cell_type", "1 cell type", "at least 2"]),
    "signatures with a type too small": (signatures_with(extra=["--min-cells-per-type", "31"]),
                                         ["(30", "--min-cells-per-type"]),
    "signatures --device cuda without a GPU": (signatures_with(extra=["--device", "cuda"]), ["--device cuda"]),
}


@pytest.fixture(scope="module", autouse=True)
def lymph_node(real_data, inputs):
    """The lymph node reference, its first 300 genes (quicker to read), beside the other inputs."""
    reference = ad.read_h5ad(real_data / LYMPH_NODE)
    reference[:, :300].copy().write_h5ad(inputs.parent / "lymph_node.h5ad")


def assert_one_line_error(result, expected, outdir):
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, result.output
    for part in expected:
        assert part in errors[0], (part, errors[0])
    assert not outdir.exists() or not any(outdir.iterdir())


@pytest.mark.parametrize("case", CASES)
def test_mistake_is_a_one_line_error_and_writes_nothing(case, inputs, tmp_path):
    if case.endswith("without a GPU") and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    command, expected = CASES[case]
    outdir = tmp_path / "out"
    result = CliRunner().invoke(main, [*command(inputs, tmp_path), "--outdir", str(outdir)])
    assert_one_line_error(result, expected, outdir)


@pytest.mark.parametrize("step", ["qc", "map", "signatures"])
def test_output_folder_under_a_file_is_a_one_line_error(step, inputs, tmp_path):
    commands = {"qc": no_spot_after_qc, "map": map_with(), "signatures": signatures_with()}
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    command = [*commands[step](inputs, tmp_path), "--outdir", str(blocker / "out")]
    if step == "qc":
        command.remove("--min-counts")
        command.remove("1000000000")
    result = CliRunner().invoke(main, command)
    assert_one_line_error(result, [str(blocker / "out"), "--outdir"], blocker / "out")
    assert blocker.read_text() == ""


def test_auto_device_falls_back_to_the_cpu_and_says_so(inputs, tmp_path, caplog):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    from tissuemap.log import logger
    from tissuemap.models.device import resolve_device

    logger.addHandler(caplog.handler)  # the tissuemap logger does not propagate to the root logger caplog watches
    try:
        with caplog.at_level("INFO", logger="tissuemap"):
            assert resolve_device("auto").type == "cpu"
    finally:
        logger.removeHandler(caplog.handler)
    assert "device: cpu" in caplog.text and "no CUDA GPU found" in caplog.text
