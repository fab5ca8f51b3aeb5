"""Reading and checking an annotated single-cell reference (tissuemap.reference.read_reference)."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from tissuemap.errors import InputError
from tissuemap.reference import check_reference, read_reference


def small_reference(labels=("a",) * 12 + ("b",) * 12, counts=None) -> ad.AnnData:
    """A tiny reference: 24 cells x 5 genes of Poisson counts, two types, a batch and a technology column."""
    n_cells = len(labels)
    if counts is None:
        counts = np.random.default_rng(0).poisson(2.0, size=(n_cells, 5)).astype(np.float32)
    obs = pd.DataFrame(
        {
            "cell_type": list(labels),
            "sample": ["s1", "s2"] * (n_cells // 2),
            "technology": ["3prime"] * n_cells,
        },
        index=[f"cell{i}" for i in range(n_cells)],
    )
    return ad.AnnData(X=sp.csr_matrix(counts), obs=obs, var=pd.DataFrame(index=[f"G{j}" for j in range(5)]))


def write(adata: ad.AnnData, tmp_path: Path, name: str = "ref.h5ad") -> Path:
    path = tmp_path / name
    adata.write_h5ad(path)
    return path


def test_lymph_node_reference_is_read_with_string_categories(lymph_node_reference, lymph_node_types):
    adata = read_reference(lymph_node_reference, "cell_type")
    assert adata.shape == (330, 10237)
    assert adata.obs["cell_type"].dtype == "category"
    assert adata.obs["cell_type"].value_counts().to_dict() == {name: 30 for name in lymph_node_types}


def test_too_small_cell_type_is_named_unless_the_check_is_off(islets_reference):
    with pytest.raises(InputError, match=r"fewer than 10 cells.*'mesenchymal cell' \(9\)"):
        read_reference(islets_reference, "cell_type", batch_key="donor_id")
    adata = read_reference(islets_reference, "cell_type", batch_key="donor_id", min_cells_per_type=None)
    assert (adata.obs["cell_type"] == "mesenchymal cell").sum() == 9
    assert adata.obs["donor_id"].dtype == "category"


def test_counts_are_taken_from_the_layer(tmp_path):
    adata = small_reference()
    counts = adata.X.toarray()
    adata.layers["counts"] = adata.X.copy()
    adata.X = sp.csr_matrix(np.log1p(counts))
    path = write(adata, tmp_path)
    read = read_reference(path, "cell_type", layer="counts")
    np.testing.assert_array_equal(read.X.toarray(), counts)
    assert "counts" not in read.layers
    # the log-transformed X itself is refused, pointing at the layer option and the file's layers
    for check in (read_reference, check_reference):
        with pytest.raises(InputError, match=r"X holds non-integer values.*--layer NAME \(layers: 'counts'\), or "
                                             r"--layer raw for \.raw"):
            check(path, "cell_type")
    check_reference(path, "cell_type", layer="counts")


def test_layer_raw_reads_dot_raw_with_its_genes(tmp_path):
    adata = small_reference()
    counts = adata.X.toarray()
    adata.raw = adata
    normalised = adata[:, :3].copy()  # as after highly-variable-gene selection: .raw keeps every gene
    normalised.X = sp.csr_matrix(np.log1p(normalised.X.toarray()))
    path = write(normalised, tmp_path)
    read = read_reference(path, "cell_type", layer="raw")
    assert list(read.var_names) == [f"G{j}" for j in range(5)]
    np.testing.assert_array_equal(read.X.toarray(), counts)
    check_reference(path, "cell_type", layer="raw")
    with pytest.raises(InputError, match="has no .raw and no layer 'raw' \\(given as --layer\\)"):
        read_reference(write(small_reference(), tmp_path, "plain.h5ad"), "cell_type", layer="raw")


def test_missing_layer_lists_the_layers(tmp_path):
    adata = small_reference()
    adata.layers["spliced"] = adata.X.copy()
    with pytest.raises(InputError, match=r"no layer 'counts'.*available layers: 'spliced'"):
        read_reference(write(adata, tmp_path), "cell_type", layer="counts")


@pytest.mark.parametrize(
    "keys, missing",
    [
        ({"labels_key": "celltype"}, "'celltype' \\(given as --labels-key\\)"),
        ({"labels_key": "cell_type", "batch_key": "batch"}, "'batch' \\(given as --batch-key\\)"),
        ({"labels_key": "cell_type", "covariate_keys": ["assay"]}, "'assay' \\(given as --covariate-keys\\)"),
    ],
)
@pytest.mark.parametrize("check", [read_reference, check_reference])
def test_missing_column_lists_the_columns(tmp_path, keys, missing, check):
    path = write(small_reference(), tmp_path)
    with pytest.raises(InputError, match=f"obs has no column {missing}; available columns: 'cell_type', 'sample'"):
        check(path, **keys)


@pytest.mark.parametrize("empty", [None, ""])
def test_unlabelled_cells_are_refused(tmp_path, empty):
    labels = ["a"] * 12 + ["b"] * 11 + [empty]
    path = write(small_reference(labels=labels), tmp_path)
    with pytest.raises(InputError, match=r"'cell_type' is empty for 1 cells \(first: 'cell23'\)"):
        read_reference(path, "cell_type")


def test_a_single_cell_type_is_refused(tmp_path):
    path = write(small_reference(labels=["a"] * 24), tmp_path)
    with pytest.raises(InputError, match="holds 1 cell type; cell2location needs at least 2"):
        read_reference(path, "cell_type")


def test_numeric_labels_become_names(tmp_path):
    adata = small_reference()
    adata.obs["cluster"] = [0] * 12 + [1] * 12
    read = read_reference(write(adata, tmp_path), "cluster")
    assert list(read.obs["cluster"].cat.categories) == ["0", "1"]


def test_non_integer_counts_point_at_the_entry(tmp_path):
    counts = np.ones((24, 5), dtype=np.float32)
    counts[3, 2] = 0.5
    path = write(small_reference(counts=counts), tmp_path)
    with pytest.raises(InputError, match=r"non-integer values \(first at 'cell3', 'G2': 0.5\)"):
        read_reference(path, "cell_type")


@pytest.mark.filterwarnings("ignore:Variable names are not unique")
def test_repeated_gene_names_are_refused(tmp_path):
    adata = small_reference()
    adata.var_names = ["G0", "G1", "G1", "G3", "G4"]
    with pytest.raises(InputError, match=r"1 gene names repeat in var_names \(first: 'G1'\)"):
        read_reference(write(adata, tmp_path), "cell_type")


def test_a_file_that_is_not_h5ad_is_refused(tmp_path):
    path = tmp_path / "ref.h5ad"
    path.write_text("cell,type\n")
    with pytest.raises(InputError, match="cannot be read as an h5ad file"):
        read_reference(path, "cell_type")
