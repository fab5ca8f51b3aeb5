"""`tissuemap simulate`: complete, reproducible ground-truth data sets that real readers accept."""

import json
import re

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
from click.testing import CliRunner
from PIL import Image

from tissuemap.cli import main
from tissuemap.counts import check_raw_counts
from tissuemap.io import read_spaceranger
from tissuemap.samplesheet import read_samplesheet
from tissuemap.simulation.dataset import simulate_dataset
from tissuemap.simulation.genes import gene_table
from tissuemap.simulation.image import BACKGROUND
from tissuemap.simulation.parameters import SimulationParameters
from tissuemap.simulation.profiles import RARE, cell_type_table, expression_profiles
from tissuemap.simulation.reference import simulate_reference

SMALL = {
    "seed": 7,
    "n_samples": 3,  # three, to see the positions layouts alternate: 1.x, 2.x, 1.x
    "n_spots": 150,
    "n_genes": 300,
    "n_cell_types": 6,
    "n_cells": 400,
    "n_batches": 3,
    "n_zones": 3,
}
SAMPLES = ("sample1", "sample2", "sample3")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A small data set made through the command line."""
    outdir = tmp_path_factory.mktemp("simulated")
    options = [f"--{name.replace('_', '-')}={value}" for name, value in SMALL.items()]
    result = CliRunner().invoke(main, ["simulate", "--outdir", str(outdir), *options])
    assert result.exit_code == 0, result.output
    return outdir


def read_truth(dataset, sample):
    abundance = pd.read_csv(dataset / "truth" / f"{sample}.cell_abundance.csv", index_col=0)
    spots = pd.read_csv(dataset / "truth" / f"{sample}.spots.csv", index_col=0)
    return abundance, spots


def test_files_exist_and_agree(dataset):
    reference = ad.read_h5ad(dataset / "reference.h5ad")
    profiles = pd.read_csv(dataset / "truth" / "profiles.csv", index_col=0)
    platform = pd.read_csv(dataset / "truth" / "platform_effect.csv", index_col=0)
    assert reference.shape == (SMALL["n_cells"], SMALL["n_genes"])
    assert list(profiles.index) == list(reference.var_names) == list(platform.index)
    assert list(profiles.columns) == list(reference.obs["cell_type"].cat.categories)
    assert all(re.fullmatch(r"ENS[A-Z]*G\d{11}", gene) for gene in reference.var_names)
    assert reference.var["SYMBOL"].str.startswith("MT-").sum() == 13
    assert reference.obs["batch"].nunique() == SMALL["n_batches"]
    assert set(reference.obs["technology"]) == {"3prime", "5prime"}

    sheet = pd.read_csv(dataset / "samplesheet.csv")
    assert list(sheet.columns) == ["sample", "spaceranger_dir"]
    assert list(sheet["sample"]) == list(SAMPLES)
    for sample, outs in zip(sheet["sample"], sheet["spaceranger_dir"]):
        outs = dataset / outs
        matrix = sc.read_10x_h5(outs / "filtered_feature_bc_matrix.h5")
        abundance, spots = read_truth(dataset, sample)
        assert matrix.shape == (SMALL["n_spots"], SMALL["n_genes"])
        assert list(matrix.var["gene_ids"]) == list(profiles.index)
        assert list(abundance.index) == list(spots.index) == list(matrix.obs_names)
        assert list(abundance.columns) == list(profiles.columns)
        for name in ("scalefactors_json.json", "tissue_lowres_image.png", "tissue_hires_image.png"):
            assert (outs / "spatial" / name).is_file()

    params = json.loads((dataset / "simulation.json").read_text())["parameters"]
    assert {name: params[name] for name in SMALL} == SMALL


def test_positions_files_follow_alternating_spaceranger_versions(dataset):
    for sample, (name, header) in zip(
        SAMPLES,
        [("tissue_positions_list.csv", None), ("tissue_positions.csv", 0), ("tissue_positions_list.csv", None)],
    ):
        spatial = dataset / "samples" / sample / "outs" / "spatial"
        assert sorted(path.name for path in spatial.glob("tissue_positions*")) == [name]
        positions = pd.read_csv(spatial / name, header=header)
        assert positions.shape[1] == 6
        in_tissue = positions.iloc[:, 1] == 1
        assert in_tissue.sum() == SMALL["n_spots"]
        assert set(positions.iloc[:, 0][in_tissue]) == set(read_truth(dataset, sample)[0].index)
        rows, columns = positions.iloc[:, 2], positions.iloc[:, 3]
        assert ((rows + columns) % 2 == 0).all()  # Visium's hexagonal grid
        with h5py.File(spatial.parent / "filtered_feature_bc_matrix.h5") as h5:
            assert h5.attrs["library_ids"][0].decode() == sample
            version = h5.attrs["software_version"]
        assert version.startswith("spaceranger-1." if header is None else "spaceranger-2.")


def test_counts_are_raw_integers_with_realistic_depth(dataset):
    reference = ad.read_h5ad(dataset / "reference.h5ad")
    assert reference.X.dtype == np.float32
    check_raw_counts(reference.X, "reference.h5ad")
    assert 1000 < np.median(np.asarray(reference.X.sum(axis=1))) < 6000
    for sample in SAMPLES:
        with h5py.File(dataset / "samples" / sample / "outs" / "filtered_feature_bc_matrix.h5") as h5:
            assert h5["matrix/data"].dtype == np.int32
        matrix = sc.read_10x_h5(dataset / "samples" / sample / "outs" / "filtered_feature_bc_matrix.h5")
        check_raw_counts(matrix.X, sample)
        assert 500 < np.median(np.asarray(matrix.X.sum(axis=1))) < 6000
        mitochondrial = matrix.var_names.str.startswith("MT-")
        assert matrix[:, mitochondrial].X.sum() > 0


def test_default_gene_count_gives_mostly_zeros(tmp_path):
    # depth per cell or spot does not depend on the gene count, so sparsity is judged at the default one
    params = SimulationParameters(n_samples=1, n_spots=100, n_cells=600)
    outdir = simulate_dataset(params, tmp_path)
    reference = ad.read_h5ad(outdir / "reference.h5ad")
    spots = sc.read_10x_h5(outdir / "samples" / "sample1" / "outs" / "filtered_feature_bc_matrix.h5")
    assert reference.n_vars == spots.n_vars == 2000
    assert 1 - reference.X.nnz / np.prod(reference.shape) > 0.5
    assert 1 - spots.X.nnz / np.prod(spots.shape) > 0.4


def test_truth_tables_match_the_model(dataset):
    cell_types = pd.read_csv(dataset / "truth" / "cell_types.csv", index_col=0)
    for sample in SAMPLES:
        abundance, spots = read_truth(dataset, sample)
        assert (abundance.to_numpy() >= 0).all() and np.issubdtype(abundance.to_numpy().dtype, np.integer)
        assert (spots["total_cells"] == abundance.sum(axis=1)).all()
        assert spots["total_cells"].mean() == pytest.approx(8, rel=0.25)  # the default n_cells_per_location
        assert spots["detection_sensitivity"].gt(0).all()
        assert spots["zone"].nunique() == SMALL["n_zones"]
        # rare types hold cells in a few spots only; zone types live mostly in their own zone
        presence = (abundance > 0).mean()
        for name, row in cell_types.iterrows():
            if row["spatial_role"] == RARE:
                assert 0 < presence[name] < 0.1
            elif row["spatial_role"] == "zone":
                in_home = abundance.loc[spots["zone"] == row["home_zone"], name].sum()
                assert in_home > 0.8 * abundance[name].sum()


def test_images_show_tissue_where_the_spots_are(dataset):
    for sample in SAMPLES:
        spatial = dataset / "samples" / sample / "outs" / "spatial"
        scalefactors = json.loads((spatial / "scalefactors_json.json").read_text())
        image = np.asarray(Image.open(spatial / "tissue_lowres_image.png").convert("RGB"))
        assert 200 <= max(image.shape[:2]) <= 1000
        name = next(spatial.glob("tissue_positions*")).name
        positions = pd.read_csv(spatial / name, header=0 if name == "tissue_positions.csv" else None).to_numpy()
        in_tissue = positions[:, 1] == 1
        rows = np.rint(positions[:, 4].astype(float) * scalefactors["tissue_lowres_scalef"]).astype(int)
        columns = np.rint(positions[:, 5].astype(float) * scalefactors["tissue_lowres_scalef"]).astype(int)
        glass = (image[rows, columns] == BACKGROUND).all(axis=1)
        assert not glass[in_tissue].any()
        assert glass[~in_tissue].mean() > 0.9


def test_same_seed_gives_same_files_and_another_seed_other_data(dataset, tmp_path):
    def spatial_counts(outdir):
        return sc.read_10x_h5(outdir / "samples" / "sample1" / "outs" / "filtered_feature_bc_matrix.h5").X

    same = simulate_dataset(SimulationParameters(**SMALL), tmp_path / "same")
    other = simulate_dataset(SimulationParameters(**{**SMALL, "seed": 8}), tmp_path / "other")
    files = sorted(path.relative_to(dataset) for path in dataset.rglob("*") if path.is_file())
    assert files == sorted(path.relative_to(same) for path in same.rglob("*") if path.is_file())
    for path in files:
        if path.suffix != ".h5ad":  # anndata's own writer decides that file's bytes: its matrix is compared below
            assert (same / path).read_bytes() == (dataset / path).read_bytes(), path
    assert (ad.read_h5ad(same / "reference.h5ad").X != ad.read_h5ad(dataset / "reference.h5ad").X).nnz == 0
    assert spatial_counts(other).shape == spatial_counts(dataset).shape
    assert (spatial_counts(other) != spatial_counts(dataset)).nnz > 0
    assert (ad.read_h5ad(other / "reference.h5ad").X != ad.read_h5ad(dataset / "reference.h5ad").X).nnz > 0


def top_batches_share(confounding: float) -> float:
    """Mean over cell types of the share of the type's cells in its two largest batches (of six)."""
    params = SimulationParameters(n_genes=200, n_cell_types=8, n_cells=3000, n_batches=6, confounding=confounding)
    rng = np.random.default_rng(0)
    genes = gene_table(params.n_genes)
    cell_types = cell_type_table(params, rng)
    profiles = expression_profiles(genes, cell_types, params, rng)
    reference, _, _ = simulate_reference(profiles, genes, cell_types, params, rng)
    table = pd.crosstab(reference.obs["cell_type"], reference.obs["batch"]).to_numpy()
    top_two = np.sort(table, axis=1)[:, -2:].sum(axis=1)
    return float((top_two / table.sum(axis=1)).mean())


def test_confounding_concentrates_cell_types_in_few_batches():
    assert top_batches_share(0.0) < 0.5  # 2 of 6 batches: ~1/3 when spread evenly
    assert top_batches_share(0.95) > 0.9


def test_every_sample_reads_back_through_the_samplesheet_and_the_project_reader(dataset):
    samples = read_samplesheet(dataset / "samplesheet.csv")
    assert [sample.sample for sample in samples] == list(SAMPLES)
    for sample in samples:
        adata = read_spaceranger(sample.path, sample.sample)
        abundance, _ = read_truth(dataset, sample.sample)
        assert list(adata.obs_names) == list(abundance.index)
        positions_file = next((sample.path / "spatial").glob("tissue_positions*"))
        has_header = positions_file.name == "tissue_positions.csv"
        positions = pd.read_csv(positions_file, header=None, skiprows=int(has_header), index_col=0)
        positions = positions.loc[adata.obs_names]
        # obsm['spatial'] is (x, y) = (pxl_col_in_fullres, pxl_row_in_fullres)
        np.testing.assert_array_equal(adata.obsm["spatial"], positions[[5, 4]].to_numpy())
        assert adata.uns["spatial"][sample.sample]["scalefactors"]["tissue_lowres_scalef"] > 0
        assert {"hires", "lowres"} <= set(adata.uns["spatial"][sample.sample]["images"])


def test_impossible_sizes_are_one_line_errors(tmp_path):
    result = CliRunner().invoke(main, ["simulate", "--outdir", str(tmp_path / "out"), "--n-genes", "50"])
    assert result.exit_code == 1
    assert result.output.startswith("Error: --n-genes 50: too few") and result.output.count("\n") == 1
    assert not (tmp_path / "out" / "reference.h5ad").exists()
