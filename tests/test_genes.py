"""The cell2location gene filter (rule, AnnData step, `tissuemap filter-genes`) and gene matching."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.sparse as sp
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from tissuemap.cli import main
from tissuemap.errors import InputError
from tissuemap.genes import (
    BY_ID,
    BY_SYMBOL,
    filter_genes,
    gene_filter_table,
    match_genes,
)

# ---------------------------------------------------------------------------------------------------------------
# the rule

def edge_case_reference(sparse: bool) -> ad.AnnData:
    """1,000 cells; with the tutorial cutoffs 5 / 0.03 / 1.12 the percentage threshold is 30 cells.

    Each gene sits on, or one step past, one of the strict inequalities.
    """
    columns = {
        "undetected": [],
        "in_30_cells": [1] * 30,  # n_cells == 1000 * 0.03: not more
        "in_31_cells": [1] * 31,
        "in_5_cells_mean_3": [3] * 5,  # n_cells == cell_count_cutoff: not more
        "in_6_cells_mean_3": [3] * 6,
        "in_25_cells_mean_1.12": [1] * 22 + [2] * 3,  # 28 / 25 == nonz_mean_cutoff: not more
        "in_25_cells_mean_1.16": [1] * 21 + [2] * 4,
        "in_29_cells_mean_1": [1] * 29,
    }
    counts = np.zeros((1000, len(columns)), dtype=np.float32)
    for j, values in enumerate(columns.values()):
        counts[np.arange(len(values)) * 7 % 1000, j] = values  # spread over the cells
    var = pd.DataFrame({"SYMBOL": [name.upper() for name in columns]}, index=list(columns))
    return ad.AnnData(X=sp.csr_matrix(counts) if sparse else counts, var=var)


@pytest.mark.parametrize("sparse", [True, False])
def test_rule_on_the_strict_inequality_edges(sparse):
    table = gene_filter_table(edge_case_reference(sparse))
    assert table["n_cells"].tolist() == [0, 30, 31, 5, 6, 25, 25, 29]
    np.testing.assert_allclose(table["nonz_mean"], [np.nan, 1, 1, 3, 3, 1.12, 1.16, 1])
    assert table.index[table["keep"]].tolist() == ["in_31_cells", "in_6_cells_mean_3", "in_25_cells_mean_1.16"]


def test_undetected_genes_are_dropped_whatever_the_cutoffs():
    table = gene_filter_table(edge_case_reference(sparse=True), -1, -0.1, -1)
    assert table["keep"].tolist() == [False] + [True] * 7


def test_filter_keeps_counts_and_var_columns_and_records_the_filter():
    adata = edge_case_reference(sparse=True)
    filtered = filter_genes(adata, cell_count_cutoff=4, cell_percentage_cutoff2=0.03, nonz_mean_cutoff=1.12)
    kept = ["in_31_cells", "in_5_cells_mean_3", "in_6_cells_mean_3", "in_25_cells_mean_1.16"]
    assert filtered.var_names.tolist() == kept
    assert filtered.var["SYMBOL"].tolist() == [name.upper() for name in kept]
    np.testing.assert_array_equal(filtered.X.toarray(), adata[:, kept].X.toarray())
    summary = filtered.uns["filter_genes"]
    assert {k: summary[k] for k in summary if k != "genes"} == {
        "cell_count_cutoff": 4, "cell_percentage_cutoff2": 0.03, "nonz_mean_cutoff": 1.12,
        "n_cells_total": 1000, "n_genes_in": 8, "n_genes_kept": 4, "n_genes_undetected": 1,
    }
    assert summary["genes"].index.tolist() == adata.var_names.tolist()


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 40).flatmap(lambda n_cells: st.lists(
        st.lists(st.integers(0, 4), min_size=n_cells, max_size=n_cells), min_size=1, max_size=6)),
    st.integers(0, 6),
    st.floats(0, 1),
    st.floats(0, 3),
)
def test_rule_matches_a_gene_by_gene_reading_of_the_spec(genes, cell_count_cutoff, percentage, nonz_mean_cutoff):
    counts = np.array(genes, dtype=np.float32).T  # cells x genes
    table = gene_filter_table(ad.AnnData(X=counts), cell_count_cutoff, percentage, nonz_mean_cutoff)
    for j, column in enumerate(counts.T):
        detected = int((column > 0).sum())
        mean = column.sum() / detected if detected else None
        expected = detected > 0 and (
            detected > len(column) * percentage or (detected > cell_count_cutoff and mean > nonz_mean_cutoff)
        )
        assert table["keep"].iloc[j] == expected


# ---------------------------------------------------------------------------------------------------------------
# tissuemap filter-genes

def run_filter_genes(*args: str):
    return CliRunner().invoke(main, ["filter-genes", *args])


@pytest.mark.parametrize(
    "reference, kept, total, n_types",
    [("lymph_node_reference", 8928, 10237, 11), ("islets_reference", 6923, 10000, 7)],
)
def test_cli_on_the_real_references(request, tmp_path, reference, kept, total, n_types):
    reference = request.getfixturevalue(reference)
    result = run_filter_genes("--reference", str(reference), "--labels-key", "cell_type", "--outdir", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "reference.filter_genes.json", "reference.filter_genes.png", "reference.filtered.h5ad",
    ]
    report = json.loads((tmp_path / "reference.filter_genes.json").read_text())
    assert (report["n_genes_in"], report["n_genes_kept"]) == (total, kept)
    assert (report["cell_count_cutoff"], report["cell_percentage_cutoff2"], report["nonz_mean_cutoff"]) == (
        5, 0.03, 1.12)
    assert len(report["cells_per_type"]) == n_types and sum(report["cells_per_type"].values()) == report["n_cells"]

    original = ad.read_h5ad(reference)
    filtered = ad.read_h5ad(tmp_path / "reference.filtered.h5ad")
    assert filtered.shape == (original.n_obs, kept)
    assert filtered.var.columns.tolist() == original.var.columns.tolist()
    assert (filtered.X != original[:, filtered.var_names].X).nnz == 0
    assert (tmp_path / "reference.filter_genes.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_thresholds_change_the_selection(lymph_node_reference, tmp_path):
    result = run_filter_genes("--reference", str(lymph_node_reference), "--labels-key", "cell_type", "--outdir", str(tmp_path),
                              "--cell-count-cutoff", "15", "--cell-percentage-cutoff2", "0.05")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "reference.filter_genes.json").read_text())
    expected = gene_filter_table(ad.read_h5ad(lymph_node_reference), 15, 0.05, 1.12)["keep"].sum()
    assert report["n_genes_kept"] == expected < 8928


def write_reference(tmp_path: Path, x: np.ndarray, layers: dict | None = None) -> Path:
    obs = pd.DataFrame({"cell_type": ["a", "b"] * (len(x) // 2)}, index=[f"c{i}" for i in range(len(x))])
    adata = ad.AnnData(X=x, obs=obs, var=pd.DataFrame(index=[f"G{j}" for j in range(x.shape[1])]), layers=layers)
    path = tmp_path / "ref.h5ad"
    adata.write_h5ad(path)
    return path


@pytest.mark.parametrize(
    "counts, options, message",
    [
        (np.ones((10, 4)), ["--labels-key", "celltype"], "obs has no column 'celltype'"),
        (np.full((10, 4), 0.5), ["--labels-key", "cell_type"], "X holds non-integer values"),
        (np.ones((10, 4)), ["--labels-key", "cell_type", "--layer", "counts"], "has no layer 'counts'"),
    ],
)
def test_cli_errors_leave_no_output(tmp_path, counts, options, message):
    path = write_reference(tmp_path, counts.astype(np.float32))
    outdir = tmp_path / "out"
    outdir.mkdir()
    result = run_filter_genes("--reference", str(path), "--outdir", str(outdir), *options)
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: {path}") and message in result.output
    assert result.output.count("\n") == 1
    assert list(outdir.iterdir()) == []


def test_cli_reads_counts_from_the_layer(tmp_path):
    counts = np.random.default_rng(1).poisson(1.0, size=(40, 6)).astype(np.float32)
    path = write_reference(tmp_path, np.log1p(counts), {"counts": counts})
    result = run_filter_genes("--reference", str(path), "--labels-key", "cell_type", "--layer", "counts",
                              "--outdir", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    filtered = ad.read_h5ad(tmp_path / "out" / "reference.filtered.h5ad")
    np.testing.assert_array_equal(np.asarray(filtered.X), counts[:, gene_filter_table(ad.AnnData(counts))["keep"]])


# ---------------------------------------------------------------------------------------------------------------
# gene matching

@pytest.fixture(scope="module")
def spatial_var(real_data) -> pd.DataFrame:
    """Features of a real Visium sample as tissuemap's spatial reader lays them out: Ensembl ids + SYMBOL."""
    with warnings.catch_warnings():  # the panel repeats a few symbols, which scanpy warns about
        warnings.filterwarnings("ignore", "Variable names are not unique")
        adata = sc.read_10x_h5(real_data / "visium" / "breast_crop" / "filtered_feature_bc_matrix.h5")
    return pd.DataFrame({"SYMBOL": adata.var_names.to_numpy()}, index=pd.Index(adata.var["gene_ids"].to_numpy()))


@pytest.fixture(scope="module")
def islets_var(islets_reference) -> pd.DataFrame:
    return ad.read_h5ad(islets_reference).var


@pytest.fixture(scope="module")
def lymph_node_var(lymph_node_reference) -> pd.DataFrame:
    return ad.read_h5ad(lymph_node_reference).var


def test_match_by_ensembl_id_ignores_versions(islets_var, spatial_var):
    versioned = spatial_var.set_axis([f"{gene_id}.12" for gene_id in spatial_var.index])
    match = match_genes(islets_var, versioned)
    assert match.key == BY_ID
    assert match.n_shared == len(set(islets_var.index) & set(spatial_var.index)) == 9122
    assert [name.split(".")[0] for name in match.spatial_names] == match.reference_names
    assert match.reference_names == [name for name in islets_var.index if name in set(match.reference_names)]


def test_match_by_ensembl_id_from_an_id_column(spatial_var):
    # a reference read from Cell Ranger output by scanpy: symbols as var_names, ids in gene_ids
    reference_var = pd.DataFrame({"gene_ids": spatial_var.index[:3000]}, index=spatial_var["SYMBOL"].iloc[:3000])
    reference_var = reference_var[~reference_var.index.duplicated(keep=False)]
    match = match_genes(reference_var, spatial_var)
    assert match.key == BY_ID
    assert match.spatial_names == reference_var["gene_ids"].tolist()
    assert match.reference_names == reference_var.index.tolist()


def test_match_by_symbol_leaves_out_ambiguous_symbols(lymph_node_var, spatial_var):
    match = match_genes(lymph_node_var, spatial_var)
    assert match.key == BY_SYMBOL
    assert spatial_var.loc[match.spatial_names, "SYMBOL"].tolist() == match.reference_names
    repeated = spatial_var["SYMBOL"][spatial_var["SYMBOL"].duplicated(keep=False)]
    unique_symbols = set(spatial_var["SYMBOL"]) - set(repeated)
    assert match.n_shared == len(set(lymph_node_var.index) & unique_symbols) == 10137
    # the README's 10,140 shared symbols include three the Visium panel carries twice
    assert len(set(lymph_node_var.index) & set(repeated)) == 3


def test_ensembl_reference_matches_symbol_only_spatial_data_through_its_symbol_column():
    spatial = pd.DataFrame(index=["INS", "GCG", "SST", "PPY"])
    reference = pd.DataFrame(
        {"feature_name": ["GCG", "INS", "KRT19"]}, index=["ENSG00000115263", "ENSG00000254647", "ENSG00000171345"]
    )
    match = match_genes(reference, spatial, min_shared=2)
    assert (match.key, match.reference_names, match.spatial_names) == (
        BY_SYMBOL, ["ENSG00000115263", "ENSG00000254647"], ["GCG", "INS"])


def test_too_few_shared_genes_is_a_clear_error(lymph_node_var, spatial_var):
    with pytest.raises(InputError) as raised:
        match_genes(lymph_node_var, spatial_var, min_shared=20000, reference_name="ln.h5ad",
                    spatial_name="breast.h5")
    message = str(raised.value)
    assert message.startswith("ln.h5ad and breast.h5 share only 10137 genes by symbol (at least 20000 needed)")
    assert "same species" in message and "--min-shared-genes" in message and "\n" not in message


def test_mouse_reference_against_human_spatial_fails_by_ensembl_id(spatial_var):
    mouse = pd.DataFrame({"SYMBOL": ["Actb", "Gapdh"]}, index=["ENSMUSG00000029580.3", "ENSMUSG00000057666"])
    with pytest.raises(InputError, match="share only 0 genes by Ensembl id"):
        match_genes(mouse, spatial_var)


def test_ids_only_against_symbols_only_cannot_be_matched(islets_var):
    ids_only = islets_var[[]]
    symbols_only = pd.DataFrame(index=islets_var["feature_name"].astype(str))
    with pytest.raises(InputError, match="reference names genes by Ensembl id only and spatial data has no Ensembl"):
        match_genes(ids_only, symbols_only)
