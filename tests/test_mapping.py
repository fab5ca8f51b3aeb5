"""`tissuemap map`: the cell2location model, its fast objective, training, and what the command writes.

Accuracy is judged on simulated samples whose true cells per spot are known, mapped with the true profiles as
signatures. Training uses a larger learning rate than the default (0.02, 1,000 steps) so that the test stays short;
the model and the objective are the same.
"""

import dataclasses
import json
import math
import os
import subprocess
import sys

import anndata as ad
import numpy as np
import pandas as pd
import pyro
import pytest
import scipy.sparse as sp
import torch
from click.testing import CliRunner
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoNormal, init_to_mean

from tissuemap.cli import main
from tissuemap.errors import InputError
from tissuemap.mapping import (
    detection_mean,
    fit_mapping,
    map_samples,
    read_qc_sample,
    read_signatures,
    setup_mapping,
)
from tissuemap.models.cell2location import (
    SITE_NAMES,
    MappingData,
    MappingObjective,
    MappingPriors,
    SiteLayout,
    guide_scale,
    initial_guide_parameters,
    model,
)

SIMULATION = {"seed": 3, "n_samples": 2, "n_spots": 300, "n_genes": 1000, "n_cell_types": 8, "n_cells": 800}
SAMPLES = ("sample1", "sample2")
STEPS, LR = 1000, 0.02
SHARED_GENES = "500"  # the simulated samples have 987 genes (1,000 minus the mitochondrial ones)
THINNING = 0.5
FIGURES = ("mapping_elbo", "mapping_observed_vs_expected", "mapping_cells_vs_counts", "cell_abundance_spatial")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    """Two simulated samples through `tissuemap qc`, mapped jointly by `tissuemap map` with the true profiles."""
    root = tmp_path_factory.mktemp("mapping")
    runner = CliRunner()
    options = [f"--{name.replace('_', '-')}={value}" for name, value in SIMULATION.items()]
    result = runner.invoke(main, ["simulate", "--outdir", str(root / "data"), *options])
    assert result.exit_code == 0, result.output
    for sample in SAMPLES:
        outs = root / "data" / "samples" / sample / "outs"
        result = runner.invoke(main, ["qc", "--sample", sample, "--input", str(outs), "--outdir", str(root / "qc")])
        assert result.exit_code == 0, result.output
    # keep each molecule of the second sample with probability 1/2: its slide's detection is then known to be half
    # what the simulation drew, whatever that was
    thinned = ad.read_h5ad(root / "qc" / "sample2.qc.h5ad")
    thinned.X.data = np.random.default_rng(0).binomial(thinned.X.data.astype(np.int64), THINNING).astype(np.float32)
    thinned.X.eliminate_zeros()
    thinned.write_h5ad(root / "qc" / "sample2.qc.h5ad")
    result = runner.invoke(main, [
        "map", "--spatial", *(str(root / "qc" / f"{sample}.qc.h5ad") for sample in SAMPLES),
        "--signatures", str(root / "data" / "truth" / "profiles.csv"), "--n-cells-per-location", "8",
        "--max-epochs", str(STEPS), "--lr", str(LR), "--device", "cpu", "--min-shared-genes", SHARED_GENES,
        "--expected-expression", "--outdir", str(root / "map"),
    ])
    assert result.exit_code == 0, result.output
    return root


def average_precision(score: np.ndarray, present: np.ndarray) -> float:
    """Area under the precision-recall curve of ranking spots by ``score`` to find those where ``present``."""
    hits = present[np.argsort(-score, kind="stable")].astype(float)
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float((precision * hits).sum() / hits.sum())


@pytest.mark.parametrize("sample", SAMPLES)
def test_joint_mapping_recovers_the_true_cells(simulated, sample):
    q05 = pd.read_csv(simulated / "map" / sample / f"{sample}.cell_abundance_q05.csv", index_col=0)
    truth = pd.read_csv(simulated / "data" / "truth" / f"{sample}.cell_abundance.csv", index_col=0)
    truth = truth.loc[q05.index, q05.columns]
    assert np.corrcoef(q05.to_numpy().ravel(), truth.to_numpy().ravel())[0, 1] >= 0.8
    present = truth > 0
    precision = pd.Series({t: average_precision(q05[t].to_numpy(), present[t].to_numpy()) for t in q05.columns})
    assert precision.mean() >= 0.8, precision
    # every type present in 5% of spots or more is found; the rare type (a few spots of 1-4 cells among ~8) counts
    # in the mean only
    assert (precision[present.mean() >= 0.05] >= 0.8).all(), precision


def test_joint_fit_gives_each_sample_its_own_detection(simulated):
    fitted = {sample: ad.read_h5ad(simulated / "map" / sample / f"{sample}.abundance.h5ad") for sample in SAMPLES}
    for sample, adata in fitted.items():
        mod = adata.uns["mod"]
        assert list(mod["samples_fitted_together"]) == list(SAMPLES)
        assert mod["batch"] == sample
        assert mod["post_sample_means"]["y_e"].shape == (1, 1)
        assert mod["post_sample_means"]["y_s"].shape == (adata.n_obs, 1)
        truth = pd.read_csv(simulated / "data" / "truth" / f"{sample}.spots.csv", index_col=0).loc[adata.obs_names]
        # each spot's sensitivity follows the simulated one, loosely: it trades off against the spot's total cells
        assert np.corrcoef(adata.obs["detection_sensitivity"], truth["detection_sensitivity"])[0, 1] > 0.2
    # the second slide's detection is THINNING times the simulated one: the fit sees the difference
    true_means = pd.read_csv(simulated / "data" / "truth" / "samples.csv", index_col=0)["detection_mean"]
    true_ratio = true_means["sample1"] / (THINNING * true_means["sample2"])
    fitted_means = pd.Series({sample: float(adata.uns["mod"]["post_sample_means"]["y_e"][0, 0])
                              for sample, adata in fitted.items()})
    fitted_ratio = fitted_means["sample1"] / fitted_means["sample2"]
    assert abs(np.log(fitted_ratio / true_ratio)) < np.log(1.25), (fitted_means, true_means)
    # platform effect and cell types are shared: the same m_g in both exports
    np.testing.assert_array_equal(*(adata.uns["mod"]["post_sample_means"]["m_g"] for adata in fitted.values()))


def test_command_writes_every_output(simulated):
    outdir = simulated / "map"
    cell_types = list(pd.read_csv(simulated / "data" / "truth" / "profiles.csv", index_col=0).columns)
    for sample in SAMPLES:
        adata = ad.read_h5ad(outdir / sample / f"{sample}.abundance.h5ad")
        assert list(adata.uns["mod"]["factor_names"]) == cell_types
        for k in ("means", "stds", "q05", "q95"):
            table = adata.obsm[f"{k}_cell_abundance_w_sf"]
            assert list(table.columns) == [f"{k}cell_abundance_w_sf_{t}" for t in cell_types]
            assert list(table.index) == list(adata.obs_names)
            assert np.isfinite(table.to_numpy()).all() and (table.to_numpy() > 0).all()
        q05, q95 = adata.obsm["q05_cell_abundance_w_sf"].to_numpy(), adata.obsm["q95_cell_abundance_w_sf"].to_numpy()
        assert (q05 < adata.obsm["means_cell_abundance_w_sf"].to_numpy()).all() and (q05 < q95).all()
        for site in SITE_NAMES:
            assert site in adata.uns["mod"]["post_sample_q05"]
        assert {"detection_sensitivity", "total_cell_abundance"} <= set(adata.obs.columns)
        assert adata.n_vars == int(SIMULATION["n_genes"]) - 13 and sp.issparse(adata.X)

        for summary, k in (("q05", "q05"), ("mean", "means")):
            table = pd.read_csv(outdir / sample / f"{sample}.cell_abundance_{summary}.csv", index_col=0)
            assert list(table.columns) == cell_types and list(table.index) == list(adata.obs_names)
            np.testing.assert_allclose(table.to_numpy(), adata.obsm[f"{k}_cell_abundance_w_sf"].to_numpy(), rtol=1e-6)

        history = json.loads((outdir / sample / f"{sample}.mapping_history.json").read_text())
        assert history["steps"] == STEPS and len(history["loss"]) == STEPS
        assert history["samples_fitted_together"] == list(SAMPLES) and history["device"].startswith("cpu")
        assert {"read", "data_setup", "model_setup", "training", "export", "write"} <= set(history["seconds"])
        assert np.median(history["loss"][-100:]) < np.median(history["loss"][:100])
        for figure in FIGURES:
            assert (outdir / sample / f"{sample}.{figure}.png").stat().st_size > 0
    assert not list(outdir.glob(".tissuemap-staging-*"))


def test_expected_expression_splits_each_count_among_types(simulated):
    adata = ad.read_h5ad(simulated / "map" / "sample1" / "sample1.abundance.h5ad")
    signatures = pd.read_csv(simulated / "data" / "truth" / "profiles.csv", index_col=0)
    means = adata.uns["mod"]["post_sample_means"]
    cell_part = means["w_sf"] @ (signatures.loc[adata.var_names].to_numpy().T * means["m_g"])
    background_share = means["s_eg"] / (cell_part + means["s_eg"])
    counts = adata.X.toarray()
    layers = [adata.layers[t] for t in adata.uns["mod"]["factor_names"]]
    assert all(sp.issparse(layer) and layer.nnz <= adata.X.nnz for layer in layers)
    # what the cell types get plus what the background gets is the observed count
    np.testing.assert_allclose(sum(layer.toarray() for layer in layers) + counts * background_share, counts,
                               rtol=1e-4, atol=1e-4)


@pytest.fixture
def tiny_data():
    """Two batches of a few spots, float64, with counts above the histogram cutoff."""
    generator = torch.Generator().manual_seed(0)
    n_spots, n_genes, n_types = 24, 30, 4
    rates = torch.distributions.Gamma(0.3, 0.1).sample((n_spots, n_genes))
    counts = torch.poisson(rates, generator=generator).double()
    counts[0, 0], counts[13, 5] = 400, 150
    return MappingData(
        counts=counts,
        batch_index=torch.tensor([0] * 14 + [1] * 10),
        signatures=torch.rand(n_types, n_genes, generator=generator, dtype=torch.float64) + 0.05,
        # every spot its own N̂ (cell counts from the image): the prior of n_s is per spot
        n_cells_per_location=torch.linspace(0.5, 30.0, n_spots, dtype=torch.float64).reshape(-1, 1),
        detection_alpha=torch.full((n_spots, 1), 20.0, dtype=torch.float64),
        detection_mean=torch.tensor(0.05, dtype=torch.float64),
    )


PRIORS = MappingPriors(n_groups=5)


def autonormal_with(data, parameters):
    """Pyro's AutoNormal on the model, its locations and scales set to ``parameters`` (2, P)."""
    pyro.clear_param_store()
    guide = AutoNormal(model, init_loc_fn=init_to_mean)
    guide(data, PRIORS)
    layout = SiteLayout.for_data(data, PRIORS)
    locs, scales = layout.split(parameters[0]), layout.split(guide_scale(parameters[1]))
    store = pyro.get_param_store()
    for name in SITE_NAMES:
        store[f"AutoNormal.locs.{name}"] = locs[name].detach().clone()
        store[f"AutoNormal.scales.{name}"] = scales[name].detach().clone()
    return guide


def test_initial_guide_is_autonormal_at_prior_means(tiny_data):
    pyro.clear_param_store()
    guide = AutoNormal(model, init_loc_fn=init_to_mean)
    guide(tiny_data, PRIORS)
    layout = SiteLayout.for_data(tiny_data, PRIORS)
    initial = initial_guide_parameters(tiny_data, PRIORS)
    locs = layout.split(initial[0])
    for name in SITE_NAMES:
        torch.testing.assert_close(getattr(guide.locs, name), locs[name])
    torch.testing.assert_close(guide_scale(initial[1]), torch.full_like(initial[1], 0.1))


def test_fast_objective_equals_pyro_trace_elbo(tiny_data):
    layout = SiteLayout.for_data(tiny_data, PRIORS)
    generator = torch.Generator().manual_seed(1)
    parameters = initial_guide_parameters(tiny_data, PRIORS)
    parameters = parameters + 0.3 * torch.randn(parameters.shape, generator=generator, dtype=torch.float64)
    guide = autonormal_with(tiny_data, parameters)
    torch.manual_seed(5)
    sample = pyro.poutine.trace(guide).get_trace(tiny_data, PRIORS)
    torch.manual_seed(5)  # the same guide sample again, inside Trace_ELBO
    pyro_loss = Trace_ELBO().differentiable_loss(model, guide, tiny_data, PRIORS)
    pyro_parameters = dict(pyro.get_param_store().named_parameters())  # unconstrained, as the optimiser sees them
    names = [f"AutoNormal.{kind}.{site}" for kind in ("locs", "scales") for site in SITE_NAMES]
    pyro_grads = dict(zip(names, torch.autograd.grad(pyro_loss, [pyro_parameters[name] for name in names])))

    objective = MappingObjective(tiny_data, PRIORS, block_rows=4)  # several blocks per batch
    assert objective.counts.large_values.numel() > 0  # counts above the histogram cutoff are exercised
    theta = layout.join({name: sample.nodes[name]["value"] for name in SITE_NAMES})
    eps = (torch.log(theta) - parameters[0]) / guide_scale(parameters[1])
    mine = parameters.clone().requires_grad_()
    loss = objective.negative_elbo(mine, eps)
    (grad,) = torch.autograd.grad(loss, [mine])
    torch.testing.assert_close(loss + objective.log_factorial_total, pyro_loss, rtol=1e-10, atol=1e-8)
    loc_grads, scale_grads = layout.split(grad[0]), layout.split(grad[1])
    for site in SITE_NAMES:
        torch.testing.assert_close(loc_grads[site], pyro_grads[f"AutoNormal.locs.{site}"], rtol=1e-8, atol=1e-8)
        torch.testing.assert_close(scale_grads[site], pyro_grads[f"AutoNormal.scales.{site}"], rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("alpha", [1e8, 1e10])
def test_the_objective_keeps_float32_precision_at_large_overdispersion(tiny_data, alpha):
    # a Poisson-like gene's guide can draw alpha = 1/v^2 of 1e10 and more: the float32 loss and gradient must still be
    # those of float64 up to rounding (one such draw once moved a fit's loss by 2.7e9 on 5e5)
    layout = SiteLayout.for_data(tiny_data, PRIORS)
    generator = torch.Generator().manual_seed(1)
    parameters = initial_guide_parameters(tiny_data, PRIORS)
    parameters = parameters + 0.3 * torch.randn(parameters.shape, generator=generator, dtype=torch.float64)
    layout.split(parameters[0])["v_eg"].fill_(-0.5 * math.log(alpha))
    loss, grad = {}, {}
    for dtype in (torch.float64, torch.float32):
        data = dataclasses.replace(tiny_data, **{field.name: getattr(tiny_data, field.name).to(dtype)
                                                 for field in dataclasses.fields(tiny_data) if field.name != "batch_index"})
        mine = parameters.to(dtype).requires_grad_()
        value = MappingObjective(data, PRIORS).negative_elbo(mine, torch.zeros(parameters.shape[1], dtype=dtype))
        loss[dtype], (grad[dtype],) = value.item(), torch.autograd.grad(value, [mine])
    # float32 rounding: ~1e-6 of the loss, of the largest gradient (main's full-data form was off by 15 to 3e3 times
    # the loss, 1e3 to 1e5 times the largest gradient)
    assert loss[torch.float32] == pytest.approx(loss[torch.float64], rel=1e-5)
    scale = float(grad[torch.float64].abs().max())
    torch.testing.assert_close(grad[torch.float32].double(), grad[torch.float64], rtol=1e-4, atol=1e-5 * scale)


def test_detection_mean_is_the_spec_formula():
    totals, n_cells = np.array([100.0, 300.0]), np.array([10.0, 10.0])
    signatures = np.array([[1.0, 1.0], [3.0, 1.0]])  # sums 2 and 4: mean 3
    assert detection_mean(totals, n_cells, np.array([0, 0]), signatures) == pytest.approx((200 / 10) / 3)
    # several slides weigh the same whatever their spot numbers
    assert detection_mean(np.array([100.0, 100.0, 400.0]), np.full(3, 10.0), np.array([0, 0, 1]), signatures) == (
        pytest.approx(((10 + 40) / 2) / 3)
    )


def small_setup(simulated, sample="sample1"):
    samples = [read_qc_sample(simulated / "qc" / f"{sample}.qc.h5ad", 8.0)]
    return setup_mapping(samples, read_signatures(simulated / "data" / "truth" / "profiles.csv"), int(SHARED_GENES))


def test_same_seed_same_numbers(simulated):
    setup = small_setup(simulated)
    first, again, other = (fit_mapping(setup, 30, LR, seed=seed, progress=False) for seed in (4, 4, 5))
    assert torch.equal(first.guide_parameters, again.guide_parameters)
    np.testing.assert_array_equal(first.loss, again.loss)
    assert not torch.equal(first.guide_parameters, other.guide_parameters)


def test_training_steps_are_the_packages_pyro_adam(simulated):
    # the package trains with pyro.optim.Adam(lr), no gradient clipping; the fit must follow the same steps
    setup = small_setup(simulated)
    fit = fit_mapping(setup, 5, LR, seed=7, progress=False)
    objective = MappingObjective(setup.data, setup.priors)
    parameters = initial_guide_parameters(setup.data, setup.priors).requires_grad_()
    optimizer = pyro.optim.Adam({"lr": LR})
    generator = torch.Generator().manual_seed(7)
    for step in range(5):
        eps = torch.empty(parameters.shape[1]).normal_(generator=generator)
        (parameters.grad,) = torch.autograd.grad(objective.negative_elbo(parameters, eps), [parameters])
        if step == 0:  # gradients beyond ClippedAdam's ±200: a clipped optimiser would take other steps
            assert (parameters.grad.abs() > 200).any()
        optimizer([parameters])
    torch.testing.assert_close(fit.guide_parameters, parameters.detach(), rtol=0, atol=0)


def test_the_tests_long_fit_levelled_off(simulated):
    history = json.loads((simulated / "map" / "sample1" / "sample1.mapping_history.json").read_text())
    assert history["converged"] is True, history["convergence"]


def test_a_short_fit_logs_plain_progress_and_says_it_has_not_converged(simulated, tmp_path):
    # stderr is a file here, as in a pipeline's log: plain progress lines, no redrawn bar
    command = [sys.executable, "-m", "tissuemap", "map", "--spatial", str(simulated / "qc" / "sample1.qc.h5ad"),
               "--signatures", str(simulated / "data" / "truth" / "profiles.csv"), "--max-epochs", "300",
               "--n-cells-per-location", "8",
               "--min-shared-genes", SHARED_GENES, "--device", "cpu", "--outdir", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stderr
    progress = [line for line in done.stderr.splitlines() if " mapping: " in line]
    assert progress and "mapping: 300/300 steps (100%)" in progress[-1] and "loss" in progress[-1]
    assert "mapping has not converged: the loss was still falling at the last step: train longer, e.g. " \
           "--max-epochs 900 (--mapping-epochs 900 in tissuemap run)" in done.stderr
    history = json.loads((tmp_path / "sample1" / "sample1.mapping_history.json").read_text())
    assert history["converged"] is False
    assert history["convergence"]["relative_tail_fall"] > 0.01


def test_divergence_is_a_clear_error(simulated):
    with pytest.raises(InputError, match="diverged.*signatures match the tissue.*--n-cells-per-location"):
        fit_mapping(small_setup(simulated), 200, lr=1e4, progress=False)


def test_too_few_shared_genes_and_bad_options_are_one_line_errors(simulated, tmp_path):
    spatial = str(simulated / "qc" / "sample1.qc.h5ad")
    signatures = str(simulated / "data" / "truth" / "profiles.csv")
    base = ["map", "--spatial", spatial, "--signatures", signatures, "--outdir", str(tmp_path / "out")]
    runner = CliRunner()
    result = runner.invoke(main, [*base, "--n-cells-per-location", "8", "--min-shared-genes", "5000"])
    assert result.exit_code == 1 and "share only 987 genes" in result.output
    assert len(result.output.strip().splitlines()) == 1
    for option, value in (("--n-cells-per-location", "0"), ("--detection-alpha", "-1"), ("--max-epochs", "0"),
                          ("--lr", "0")):
        options = {"--n-cells-per-location": "8", option: value}
        result = runner.invoke(main, [*base, *(item for pair in options.items() for item in pair)])
        assert result.exit_code == 2 and option in result.output, (option, result.output)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    for keyword, value in (("n_cells_per_location", 0.0), ("detection_alpha", -2.0), ("max_epochs", 0), ("lr", 0.0)):
        with pytest.raises(InputError):
            map_samples([spatial], signatures, **{keyword: value}, min_shared_genes=int(SHARED_GENES), device="cpu")


def test_non_integer_counts_and_bad_sample_settings_are_rejected(simulated, tmp_path):
    adata = ad.read_h5ad(simulated / "qc" / "sample1.qc.h5ad")
    adata.X = adata.X * 0.5
    adata.write_h5ad(tmp_path / "halved.qc.h5ad")
    with pytest.raises(InputError, match="non-integer"):
        read_qc_sample(tmp_path / "halved.qc.h5ad")
    adata = ad.read_h5ad(simulated / "qc" / "sample1.qc.h5ad")
    adata.uns["tissuemap"]["n_cells_per_location"] = -3.0
    adata.write_h5ad(tmp_path / "negative.qc.h5ad")
    with pytest.raises(InputError, match=r"negative.qc.h5ad: uns\['tissuemap'\].*n_cells_per_location"):
        read_qc_sample(tmp_path / "negative.qc.h5ad")


def test_bad_signatures_are_rejected(tmp_path):
    path = tmp_path / "signatures.csv"
    pd.DataFrame({"T": [1.0, -1.0], "B": [1.0, 2.0]}, index=["g1", "g2"]).to_csv(path)
    with pytest.raises(InputError, match="row 'g2', column 'T'.*non-negative"):
        read_signatures(path)


def test_the_mapping_plan_gives_each_sample_its_settings_and_the_fitting_order(simulated):
    spatial = [simulated / "qc" / f"{sample}.qc.h5ad" for sample in SAMPLES]
    plan = {"sample1": {"slide": "A", "n_cells_per_location": 5.0, "detection_alpha": 200.0, "order": 1},
            "sample2": {"slide": "A", "n_cells_per_location": 9.0, "detection_alpha": 20.0, "order": 0}}
    # the plan's values win over the arguments (and the qc file's)
    sample = read_qc_sample(spatial[0], 30.0, 1.0, plan)
    assert (sample.n_cells_per_location, sample.detection_alpha, sample.slide) == (5.0, 200.0, "A")
    with pytest.raises(InputError, match=r"sample1.qc.h5ad: sample 'sample1' is not in the mapping plan \(--plan\)"):
        read_qc_sample(spatial[0], 30.0, 20.0, {"other": plan["sample1"]})
    with pytest.raises(InputError, match="no n_cells_per_location for sample 'sample1'; give --n-cells-per-location"):
        read_qc_sample(spatial[0], None)
    # the samples are fitted in the plan's order whatever order they are given in, on the plan's slide
    setup = small_setup(simulated)
    result = map_samples(spatial, simulated / "data" / "truth" / "profiles.csv", n_cells_per_location=None, plan=plan,
                         max_epochs=2, min_shared_genes=int(SHARED_GENES), device="cpu", progress=False)
    assert [sample.name for sample in result.setup.samples] == ["sample2", "sample1"]
    assert result.setup.batch_names == ["A"] and setup.batch_names == ["sample1"]
