"""Reading Visium samples: the Space Ranger layouts 1.x to 3.x and .h5ad files, into one AnnData layout."""

import json

import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from tissuemap.errors import InputError
from tissuemap.io import read_spaceranger, read_spatial_sample
from tissuemap.io.positions import POSITIONS_COLUMNS

SR1_POSITIONS = "tissue_positions_list.csv"


@pytest.fixture(scope="module")
def breast(real_data):
    return real_data / "visium" / "breast_crop"


@pytest.fixture(scope="module")
def mouse(real_data):
    return real_data / "visium" / "mouse_brain_100genes"


@pytest.fixture(scope="module")
def breast_positions(breast):
    return pd.read_csv(breast / "spatial" / SR1_POSITIONS, header=None, names=list(POSITIONS_COLUMNS))


@pytest.fixture(scope="module")
def breast_adata(breast):
    return read_spaceranger(breast, "breast")


def make_outs(tmp_path, breast, positions: pd.DataFrame | None, positions_name: str = SR1_POSITIONS,
              matrix_name: str = "filtered_feature_bc_matrix.h5"):
    """An outs/ folder linking breast_crop's matrix (under ``matrix_name``) and images, with the given positions."""
    outs = tmp_path / "outs"
    (outs / "spatial").mkdir(parents=True)
    (outs / matrix_name).symlink_to(breast / "filtered_feature_bc_matrix.h5")
    for name in ("scalefactors_json.json", "tissue_hires_image.png", "tissue_lowres_image.png"):
        (outs / "spatial" / name).symlink_to(breast / "spatial" / name)
    if positions is not None:
        target = outs / "spatial" / positions_name
        if positions_name.endswith(".parquet"):
            positions.to_parquet(target, index=False)
        else:
            positions.to_csv(target, index=False, header=positions_name != SR1_POSITIONS)
    return outs


def write_10x_h5(path, matrix: sp.csr_matrix, barcodes, ids, names) -> None:
    """Write a spots x genes count matrix in the Space Ranger 3 h5 layout (genes x barcodes, CSC)."""
    with h5py.File(path, "w") as handle:
        group = handle.create_group("matrix")
        group["barcodes"] = np.asarray(barcodes, dtype="S")
        group["data"] = matrix.data.astype(np.int32)
        group["indices"] = matrix.indices.astype(np.int64)
        group["indptr"] = matrix.indptr.astype(np.int64)
        group["shape"] = np.asarray([matrix.shape[1], matrix.shape[0]], dtype=np.int32)
        features = group.create_group("features")
        features["id"] = np.asarray(ids, dtype="S")
        features["name"] = np.asarray(names, dtype="S")
        features["feature_type"] = np.full(len(ids), b"Gene Expression")
        features["genome"] = np.full(len(ids), b"GRCh38")


def test_space_ranger_1_layout(breast_adata, breast, breast_positions):
    adata = breast_adata
    assert adata.shape == (338, 36601)
    assert isinstance(adata.X, sp.csr_matrix) and adata.X.dtype == np.float32
    assert np.array_equal(adata.X.data, np.round(adata.X.data)) and adata.X.sum() > 0
    assert adata.var_names.is_unique and adata.var_names.str.startswith("ENSG").all()
    assert adata.var.loc["ENSG00000198712", "SYMBOL"] == "MT-CO2"
    assert (adata.obs["sample"] == "breast").all() and (adata.obs["in_tissue"] == 1).all()
    positions = breast_positions.set_index("barcode").loc[adata.obs_names]
    # obsm['spatial'] is [x, y] = [column, row] of the full-resolution image
    assert np.array_equal(adata.obsm["spatial"], positions[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy())
    assert np.array_equal(adata.obs["array_row"], positions["array_row"])
    library = adata.uns["spatial"]["breast"]
    assert library["scalefactors"] == json.loads((breast / "spatial" / "scalefactors_json.json").read_text())
    assert {key: image.shape for key, image in library["images"].items()} == {
        "hires": (401, 600, 3), "lowres": (401, 600, 3),
    }
    assert all(image.dtype == np.uint8 for image in library["images"].values())
    assert library["metadata"] == {"software_version": "spaceranger-1.3.0", "chemistry_description": "Spatial 3' v1"}


def test_whole_slide_positions_keep_only_tissue_spots_and_name_the_library(mouse):
    # mouse_brain_100genes lists all 4,992 barcodes and its h5 has no library_ids: the sample name is the library id
    adata = read_spaceranger(mouse, "brain")
    assert adata.shape == (2695, 100)
    assert list(adata.uns["spatial"]) == ["brain"]
    assert adata.uns["spatial"]["brain"]["metadata"] == {}
    assert adata.uns["spatial"]["brain"]["images"]["hires"].shape[:2] == (1998, 2000)
    scalefactors = adata.uns["spatial"]["brain"]["scalefactors"]
    assert {"tissue_hires_scalef", "tissue_lowres_scalef", "spot_diameter_fullres"} <= set(scalefactors)


@pytest.mark.parametrize("positions_name", ["tissue_positions.csv", "tissue_positions.parquet"])
def test_space_ranger_2_and_3_positions(tmp_path, breast, breast_positions, breast_adata, positions_name):
    # newer layouts: a header row or parquet, every barcode of the slide with in_tissue 0/1, in any order
    off_tissue = breast_positions.head(5).assign(barcode=[f"OFFTISSUE{i}-1" for i in range(5)], in_tissue=0)
    positions = pd.concat([breast_positions, off_tissue]).sample(frac=1, random_state=0)
    adata = read_spaceranger(make_outs(tmp_path, breast, positions, positions_name), "breast")
    assert list(adata.obs_names) == list(breast_adata.obs_names)
    assert np.array_equal(adata.obsm["spatial"], breast_adata.obsm["spatial"])


def test_raw_matrix_is_restricted_to_tissue_spots(tmp_path, breast, breast_positions, breast_adata):
    # without a filtered matrix, the raw one (every barcode of the slide) is read and cut to the in-tissue spots
    extra = [f"OFFTISSUE{i}-1" for i in range(3)]
    raw = sp.vstack([breast_adata.X, sp.csr_matrix(np.ones((3, breast_adata.n_vars), dtype=np.float32))]).tocsr()
    outs = make_outs(tmp_path, breast, None)
    (outs / "filtered_feature_bc_matrix.h5").unlink()
    write_10x_h5(
        outs / "raw_feature_bc_matrix.h5", raw, list(breast_adata.obs_names) + extra,
        breast_adata.var_names, breast_adata.var["SYMBOL"],
    )
    positions = pd.concat([breast_positions, breast_positions.head(3).assign(barcode=extra, in_tissue=0)])
    positions.to_csv(outs / "spatial" / "tissue_positions.csv", index=False)
    adata = read_spaceranger(outs, "breast")
    assert list(adata.obs_names) == list(breast_adata.obs_names)
    assert (adata.X != breast_adata.X).nnz == 0


def test_missing_input_and_missing_matrix(tmp_path):
    with pytest.raises(InputError, match="missing_outs: not found"):
        read_spatial_sample(tmp_path / "missing_outs", "s1")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no filtered_feature_bc_matrix.h5 or raw_feature_bc_matrix.h5"):
        read_spatial_sample(tmp_path / "empty", "s1")


def test_missing_positions(tmp_path, breast):
    with pytest.raises(InputError, match=r"spatial: no spot positions file .*tissue_positions.csv"):
        read_spatial_sample(make_outs(tmp_path, breast, None), "s1")


def test_positions_from_another_run(tmp_path, breast, breast_positions):
    outs = make_outs(tmp_path, breast, breast_positions.iloc[10:])
    with pytest.raises(InputError, match=r"tissue_positions_list.csv: 10 of 338 barcodes .* are missing"):
        read_spatial_sample(outs, "s1")


def test_h5ad_input_is_renamed_and_keeps_its_image(tmp_path, breast_adata):
    # as scanpy's read_visium writes it: symbols as var_names, Ensembl ids in var['gene_ids'], its own library id
    given = breast_adata[:, :50].copy()
    given.var = pd.DataFrame({"gene_ids": given.var_names}, index=given.var["SYMBOL"].to_numpy())
    given.uns["spatial"] = {"Visium_Human_Breast_Cancer": breast_adata.uns["spatial"]["breast"]}
    given.obs.loc[given.obs_names[:4], "in_tissue"] = 0
    given.X = given.X.astype(np.int64)
    given.write_h5ad(tmp_path / "sample.h5ad")
    adata = read_spatial_sample(tmp_path / "sample.h5ad", "s1")
    assert adata.n_obs == breast_adata.n_obs - 4
    assert list(adata.var_names) == list(breast_adata.var_names[:50])
    assert list(adata.var["SYMBOL"]) == list(breast_adata.var["SYMBOL"][:50])
    assert adata.X.dtype == np.float32 and sp.isspmatrix_csr(adata.X)
    assert list(adata.uns["spatial"]) == ["s1"] and "hires" in adata.uns["spatial"]["s1"]["images"]
    assert (adata.obs["sample"] == "s1").all()


def test_h5ad_without_coordinates_or_raw_counts(tmp_path, breast_adata):
    most_expressed = np.argsort(-np.asarray(breast_adata.X.sum(axis=0)).ravel())[:30]
    small = breast_adata[:20, most_expressed].copy()
    del small.uns["spatial"]
    no_coordinates = small.copy()
    del no_coordinates.obsm["spatial"]
    no_coordinates.write_h5ad(tmp_path / "no_coordinates.h5ad")
    with pytest.raises(InputError, match=r"no_coordinates.h5ad: no obsm\['spatial'\]"):
        read_spatial_sample(tmp_path / "no_coordinates.h5ad", "s1")
    normalised = small.copy()
    normalised.X = normalised.X.multiply(1 / (normalised.X.sum(axis=1) + 1)).tocsr()
    normalised.write_h5ad(tmp_path / "normalised.h5ad")
    with pytest.raises(InputError, match="normalised.h5ad: X holds non-integer values"):
        read_spatial_sample(tmp_path / "normalised.h5ad", "s1")


def test_other_files_are_refused(tmp_path, breast):
    with pytest.raises(InputError, match="give the Space Ranger outs/ folder"):
        read_spatial_sample(breast / "filtered_feature_bc_matrix.h5", "s1")


def test_space_ranger_run_folder_is_read_through_its_outs(tmp_path, breast, breast_positions):
    make_outs(tmp_path, breast, breast_positions)
    assert read_spatial_sample(tmp_path, "s1").n_obs == 338
