"""Reference signatures (`tissuemap signatures`): the regression recovers simulated truth, runs are reproducible, the
command writes every output in the cell2location package's layout, and user mistakes get one-line errors."""

import json

import anndata as ad
import numpy as np
import pandas as pd
import pyro
import pytest
import scipy.sparse as sp
import torch
from click.testing import CliRunner

from tissuemap.cli import main
from tissuemap.errors import InputError
from tissuemap.models.regression import (
    HISTOGRAM_MAX_COUNT,
    SIGNATURE_INIT_OFFSET,
    CellGroups,
    GroupedNegativeBinomial,
    RegressionModule,
    build_guide,
    cell_count_terms,
    negative_elbo,
)
from tissuemap.signatures import estimate_signatures, signature_table
from tissuemap.simulation.dataset import simulate_dataset
from tissuemap.simulation.parameters import SimulationParameters

# Small enough to fit in seconds, large enough that every type spans several reactions and both chemistries.
SIMULATION = {"n_samples": 1, "n_spots": 50, "n_zones": 2, "n_genes": 200, "n_cell_types": 6, "n_cells": 1200,
              "n_batches": 6}
# Enough steps for the fit to settle at this size: 100 epochs x 2 minibatches, with a larger step than the default.
ACCURACY_FIT = {"max_epochs": 100, "batch_size": 600, "lr": 0.02}
QUICK_FIT = {"max_epochs": 4, "batch_size": 400}


def _simulate(tmp_path_factory, confounding: float):
    folder = tmp_path_factory.mktemp(f"confounding{confounding}")
    simulate_dataset(SimulationParameters(seed=2, confounding=confounding, **SIMULATION), folder)
    truth = pd.read_csv(folder / "truth" / "profiles.csv", index_col=0)
    return folder / "reference.h5ad", truth


@pytest.fixture(scope="module")
def confounded(tmp_path_factory):
    """Types concentrated in a few reactions (confounding 0.8), so in one chemistry more than the other."""
    return _simulate(tmp_path_factory, 0.8)


@pytest.fixture(scope="module")
def unconfounded(tmp_path_factory):
    """Every type spread evenly over the reactions."""
    return _simulate(tmp_path_factory, 0.0)


@pytest.fixture
def small_reference(make_small_reference, tmp_path):
    """60 cells x 30 genes of negative binomial counts in 3 types and 2 batches, written as an h5ad; returns a
    function that writes it (optionally altered) and gives the path."""
    def write(alter=None):
        adata = make_small_reference()
        if alter is not None:
            alter(adata)
        path = tmp_path / "small.h5ad"
        adata.write_h5ad(path)
        return path

    return write


def _log_correlation(signatures: pd.DataFrame, truth: pd.DataFrame, centre_genes: bool = False) -> float:
    """Pearson correlation of log signature and log truth over genes, per type, averaged over types.

    ``centre_genes`` first subtracts each gene's mean log over types: what is left is how the types differ, without
    the spread of expression levels between genes that dominates the plain correlation (and that the mapping's
    per-gene platform effect absorbs anyway).
    """
    log_signature = np.log(signatures.loc[truth.index, truth.columns] + 1e-3)
    log_truth = np.log(truth + 1e-3)
    if centre_genes:
        log_signature = log_signature.sub(log_signature.mean(axis=1), axis=0)
        log_truth = log_truth.sub(log_truth.mean(axis=1), axis=0)
    return float(np.mean([np.corrcoef(log_signature[t], log_truth[t])[0, 1] for t in truth.columns]))


def _signatures(path, method="nb", **fit):
    adata = ad.read_h5ad(path)
    covariates = ("technology",) if method == "nb" else ()
    estimate_signatures(adata, "cell_type", batch_key="batch", covariate_keys=covariates, method=method,
                        device="cpu", **fit)
    return signature_table(adata)


def test_regression_removes_confounded_chemistry_that_averages_keep(confounded):
    path, truth = confounded
    regression = _signatures(path, **ACCURACY_FIT)
    averages = _signatures(path, method="mean")
    assert _log_correlation(regression, truth) > _log_correlation(averages, truth)
    assert _log_correlation(regression, truth) >= 0.95
    between_types = _log_correlation(regression, truth, centre_genes=True)
    assert between_types > _log_correlation(averages, truth, centre_genes=True) + 0.01


def test_regression_recovers_profiles_without_confounding(unconfounded):
    path, truth = unconfounded
    assert _log_correlation(_signatures(path, **ACCURACY_FIT), truth) >= 0.95


def test_same_seed_same_signatures_and_the_seed_matters(confounded):
    path, _ = confounded
    first = _signatures(path, seed=3, **QUICK_FIT)
    pd.testing.assert_frame_equal(first, _signatures(path, seed=3, **QUICK_FIT), check_exact=True)
    assert not np.allclose(first.to_numpy(), _signatures(path, seed=4, **QUICK_FIT).to_numpy())


def test_sparse_and_dense_counts_give_the_same_signatures(confounded):
    path, _ = confounded
    dense = _signatures(path, count_storage="dense", **QUICK_FIT)
    sparse = _signatures(path, count_storage="sparse", **QUICK_FIT)
    np.testing.assert_allclose(sparse.to_numpy(), dense.to_numpy(), rtol=1e-5)


def test_mean_method_gives_per_type_average_counts(small_reference):
    adata = ad.read_h5ad(small_reference())
    record = estimate_signatures(adata, "cell_type", method="mean")
    by_type = pd.DataFrame(adata.X.toarray(), columns=adata.var_names).groupby(adata.obs["cell_type"].to_numpy())
    expected = by_type.mean().T
    np.testing.assert_allclose(signature_table(adata).to_numpy(), expected.to_numpy(), rtol=1e-6)
    assert record["elbo"] == [] and "stds_per_cluster_mu_fg" not in adata.varm


def test_grouped_likelihood_is_the_sum_of_every_counts_gamma_poisson_log_density():
    rng = np.random.default_rng(1)
    group_mean = torch.as_tensor(rng.gamma(1.0, 5.0, (4, 11)), dtype=torch.float64)
    shape = torch.as_tensor(rng.gamma(2.0, 2.0, (1, 11)), dtype=torch.float64)
    group_ids = torch.as_tensor(rng.integers(0, 3, 17))  # group 3 has no cell
    # counts on both sides of the histogram's top value, up to hundreds
    counts = torch.as_tensor(rng.poisson(rng.gamma(0.5, 60.0, (1, 11)), (17, 11)), dtype=torch.float64)
    counts[0, :3] = torch.tensor([HISTOGRAM_MAX_COUNT - 1, HISTOGRAM_MAX_COUNT, HISTOGRAM_MAX_COUNT + 1])
    assert (counts > HISTOGRAM_MAX_COUNT).sum() > 5 and (counts == 0).any()
    count_terms = cell_count_terms(sp.csr_matrix(counts.numpy()), dtype=torch.float64)
    ours = GroupedNegativeBinomial(group_mean, shape, group_ids, count_terms).log_prob(counts)
    mean = group_mean[group_ids]
    torch.testing.assert_close(ours, pyro.distributions.GammaPoisson(shape, shape / mean).log_prob(counts).sum())


def _tiny_module():
    torch.manual_seed(0)
    n_cells, n_genes, n_types = 40, 9, 3
    counts = torch.poisson(torch.rand(n_cells, n_genes) * 4)
    type_ids = torch.arange(n_cells) % n_types
    averages = torch.stack([counts[type_ids == f].mean(0) for f in range(n_types)])
    module = RegressionModule(n_cells, n_genes, n_types, n_batches=2, n_levels=2)
    # a group per (type, batch) pair; the covariate level follows the batch
    groups = CellGroups(types=torch.arange(6) % 3, batches=torch.arange(6) // 3, levels=(torch.arange(6) // 3)[:, None])
    group_of_cell = type_ids + 3 * (torch.arange(n_cells) % 2)
    cells = torch.arange(10, 30)
    args = (counts[cells], group_of_cell[cells], cell_count_terms(sp.csr_matrix(counts[cells].numpy())), groups)
    return module, averages, args


def test_minibatch_loss_is_pyros_trace_elbo_scaled_to_all_cells():
    module, averages, args = _tiny_module()
    with pyro.settings.context(module_local_params=True):
        guide = build_guide(module, averages)
        guide(*args)
        pyro.set_rng_seed(5)
        ours = negative_elbo(module.model, guide, *args)
        pyro.set_rng_seed(5)
        reference = pyro.infer.Trace_ELBO().loss(module.model, guide, *args)
    assert ours.item() == pytest.approx(reference, rel=1e-5)


def test_guide_starts_at_type_averages_and_prior_means():
    module, averages, args = _tiny_module()
    with pyro.settings.context(module_local_params=True):
        guide = build_guide(module, averages)
        guide(*args)
        medians = guide.median()
    torch.testing.assert_close(medians["mu_fg"], averages + SIGNATURE_INIT_OFFSET)
    torch.testing.assert_close(medians["a"], torch.tensor(3.0))  # Gamma(9, 3)
    torch.testing.assert_close(medians["m_e"], torch.full((2, 1), 0.01))  # Gamma(1, 100)
    torch.testing.assert_close(medians["s_eg"], torch.full((2, 9), 0.01))  # mean m_e
    torch.testing.assert_close(medians["t_lg"], torch.ones(2, 9))
    torch.testing.assert_close(medians["v_g"], torch.full((1, 9), 1 / 3))  # Exponential(phi = 3)


def test_command_writes_every_output_in_the_package_layout(confounded, tmp_path):
    path, truth = confounded
    outdir = tmp_path / "out"
    result = CliRunner().invoke(main, [
        "signatures", "--reference", str(path), "--labels-key", "cell_type", "--batch-key", "batch",
        "--covariate-keys", "technology", "--max-epochs", "3", "--batch-size", "500", "--device", "cpu",
        "--outdir", str(outdir),
    ])
    assert result.exit_code == 0, result.output
    cell_types = sorted(truth.columns)

    table = pd.read_csv(outdir / "signatures.csv", index_col=0)
    assert list(table.columns) == cell_types
    adata = ad.read_h5ad(outdir / "reference.signatures.h5ad")
    assert list(table.index) == list(adata.var_names)
    assert (table.to_numpy() > 0).all()
    for stat in ("means", "stds", "q05", "q95"):
        summary = adata.varm[f"{stat}_per_cluster_mu_fg"]
        assert list(summary.columns) == [f"{stat}_per_cluster_mu_fg_{t}" for t in cell_types]
    means = adata.varm["means_per_cluster_mu_fg"].to_numpy()
    np.testing.assert_allclose(table.to_numpy(), means, rtol=1e-6)
    assert (adata.varm["q05_per_cluster_mu_fg"].to_numpy() < means).all()
    assert (means < adata.varm["q95_per_cluster_mu_fg"].to_numpy()).all()
    assert list(adata.uns["mod"]["factor_names"]) == cell_types
    settings = adata.uns["mod"]["settings"]
    assert settings["method"] == "nb" and settings["batch_key"] == "batch"
    assert list(settings["covariate_keys"]) == ["technology"]

    history = json.loads((outdir / "reference.signatures_history.json").read_text())
    assert len(history["elbo"]) == history["epochs"] == 3
    assert history["device"] == "cpu" and history["training_seconds"] > 0 and history["export_seconds"] >= 0
    assert history["settings"]["reference"] == str(path)
    for plot in ("elbo", "obs_vs_expected", "vs_average"):
        assert (outdir / f"reference.signatures_{plot}.png").stat().st_size > 0


def test_mean_command_writes_signatures_and_its_plot(small_reference, tmp_path):
    outdir = tmp_path / "out"
    result = CliRunner().invoke(main, ["signatures", "--reference", str(small_reference()), "--labels-key", "cell_type",
                                       "--method", "mean", "--outdir", str(outdir)])
    assert result.exit_code == 0, result.output
    assert list(pd.read_csv(outdir / "signatures.csv", index_col=0).columns) == ["type0", "type1", "type2"]
    assert json.loads((outdir / "reference.signatures_history.json").read_text())["method"] == "mean"
    assert (outdir / "reference.signatures_obs_vs_expected.png").exists()


def _set_count(value):
    def alter(adata):
        dense = adata.X.toarray()
        dense[2, 3] = value
        adata.X = sp.csr_matrix(dense)
    return alter


def _rename_type(adata):
    adata.obs.loc[adata.obs_names[:3], "cell_type"] = "tiny"


@pytest.mark.parametrize("alter, options, expected", [
    (None, ["--labels-key", "celltype"], ["'celltype'", "--labels-key"]),
    (_rename_type, [], ["'tiny' (3)", "merge or remove", "lower the minimum"]),
    (_set_count(1.5), [], ["non-integer"]),
    (_set_count(-1.0), [], ["negative"]),
    (_set_count(np.nan), [], ["NaN"]),
    (None, ["--max-epochs", "0"], ["--max-epochs"]),
    (None, ["--lr", "0"], ["--lr"]),
    (None, ["--batch-size", "0"], ["--batch-size"]),
])
def test_user_mistakes_are_one_line_errors(small_reference, tmp_path, alter, options, expected):
    arguments = ["signatures", "--reference", str(small_reference(alter)), "--labels-key", "cell_type",
                 "--min-cells-per-type", "5", "--max-epochs", "1", "--outdir", str(tmp_path / "out")]
    result = CliRunner().invoke(main, arguments + options)
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    message = result.output.strip().splitlines()[-1]
    assert message.startswith("Error: ")
    for part in expected:
        assert part in message
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_diverging_training_is_a_clear_error(small_reference):
    adata = ad.read_h5ad(small_reference())
    with pytest.raises(InputError, match="diverged.*lower --lr"):
        estimate_signatures(adata, "cell_type", batch_key="batch", max_epochs=5, lr=1e3, device="cpu")
