"""Minibatch training of the mapping model: the estimate of the objective, and what a minibatch fit gives."""

import dataclasses
import json
import logging
import math

import anndata as ad
import numpy as np
import pytest
import scipy.sparse
import torch
from click.testing import CliRunner

from tissuemap.cli import main
from tissuemap.mapping import fit_mapping, read_qc_sample, read_signatures, setup_mapping
from tissuemap.mapping.minibatch import MinibatchSteps
from tissuemap.models.cell2location import MappingData, MappingObjective, MappingPriors, initial_guide_parameters
from tissuemap.models.cell2location.minibatch import MinibatchObjective, SplitLayout, csr_counts
from tissuemap.models.row_adam import RowwiseAdam
from tissuemap.report.sample import mapping_rows
from tissuemap.training import MinibatchEpochs

PRIORS = MappingPriors(n_groups=5)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def three_slides():
    """24 spots on three slides, float64, counts above the histogram cutoff; the counts as dense and as CSR."""
    generator = torch.Generator().manual_seed(2)
    n_spots, n_genes, n_types = 24, 30, 4
    rates = torch.distributions.Gamma(0.3, 0.1).sample((n_spots, n_genes))
    counts = torch.poisson(rates, generator=generator).double()
    counts[0, 0], counts[13, 5], counts[20, 7] = 400, 150, 90
    dense = MappingData(
        counts=counts,
        batch_index=torch.tensor([0] * 10 + [1] * 8 + [2] * 6),
        signatures=torch.rand(n_types, n_genes, generator=generator, dtype=torch.float64) + 0.05,
        n_cells_per_location=torch.linspace(0.5, 30.0, n_spots, dtype=torch.float64).reshape(-1, 1),
        detection_alpha=torch.linspace(5.0, 200.0, n_spots, dtype=torch.float64).reshape(-1, 1),
        detection_mean=torch.tensor(0.05, dtype=torch.float64),
    )
    sparse = scipy.sparse.csr_matrix(counts.numpy())
    csr = csr_counts(sparse.indptr, sparse.indices, sparse.data, tuple(counts.shape))
    return dense, dataclasses.replace(dense, counts=csr)


def full_loss_and_gradient(data, parameters, eps):
    objective = MappingObjective(data, PRIORS, block_rows=4)
    mine = parameters.clone().requires_grad_()
    loss = objective.negative_elbo(mine, eps)
    return loss.detach(), torch.autograd.grad(loss, [mine])[0], objective.log_factorial_total


def batch_loss_and_gradient(objective, layout, parameters, eps, ids):
    """Loss of the batch ``ids`` and its gradient as a full ``(2, P)`` tensor (zero on the other locations)."""
    global_part, local = layout.split(parameters)
    global_eps, local_eps = layout.split(eps)
    batch = objective.batch(ids)
    global_part = global_part.clone().requires_grad_()
    local_rows = local[:, batch.ids].clone().requires_grad_()
    loss = objective.negative_elbo(global_part, local_rows, global_eps, local_eps[batch.ids], batch)
    global_grad, local_grad = torch.autograd.grad(loss, [global_part, local_rows])
    full_local_grad = torch.zeros_like(local)
    full_local_grad[:, batch.ids] = local_grad
    return loss.detach(), layout.join(global_grad, full_local_grad)


@pytest.mark.parametrize("batch_size", [6, 7, 24], ids=["4 equal batches", "unequal batches", "one batch"])
def test_an_epochs_batches_average_to_the_full_data_loss_and_gradient(three_slides, batch_size):
    dense, sparse = three_slides
    generator = torch.Generator().manual_seed(1)
    parameters = initial_guide_parameters(dense, PRIORS)
    parameters = parameters + 0.3 * torch.randn(parameters.shape, generator=generator, dtype=torch.float64)
    eps = torch.randn(parameters.shape[1], generator=generator, dtype=torch.float64)
    full_loss, full_grad, log_factorial_total = full_loss_and_gradient(dense, parameters, eps)

    objective = MinibatchObjective(sparse, PRIORS, block_rows=3)  # several blocks per slide within a batch
    assert objective.batch(torch.arange(24)).tables.large_values.numel() > 0  # counts above the cutoff: exercised
    assert objective.log_factorial_total == pytest.approx(log_factorial_total, rel=1e-12)
    layout = SplitLayout(objective.layout.layout)
    order = torch.randperm(24, generator=generator)  # batches mix the slides
    loss, grad = torch.zeros((), dtype=torch.float64), torch.zeros_like(parameters)
    for ids in order.split(batch_size):
        assert len(set(dense.batch_index[ids].tolist())) > 1 or batch_size == 24
        batch_loss, batch_grad = batch_loss_and_gradient(objective, layout, parameters, eps, ids)
        # each batch stands for all the data; weighted by its share of the spots (equal weights: the plain mean)
        loss += batch_loss * len(ids) / 24
        grad += batch_grad * len(ids) / 24
    torch.testing.assert_close(loss, full_loss, rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(grad, full_grad, rtol=1e-10, atol=1e-10)


def test_split_layout_round_trips(three_slides):
    dense, _ = three_slides
    parameters = initial_guide_parameters(dense, PRIORS)
    parameters = parameters + torch.arange(parameters.numel(), dtype=torch.float64).reshape(parameters.shape)
    layout = SplitLayout(MinibatchObjective(three_slides[1], PRIORS).layout.layout)
    global_part, local = layout.split(parameters)
    assert local.shape == (2, 24, 3 + PRIORS.n_groups + 4)
    assert torch.equal(layout.join(global_part, local), parameters)


def test_rowwise_adam_is_torch_adam_on_the_rows_it_is_given():
    generator = torch.Generator().manual_seed(3)
    start = torch.randn(2, 6, 5, generator=generator, dtype=torch.float64)
    grads = [torch.randn(2, 6, 5, generator=generator, dtype=torch.float64) for _ in range(4)]
    reference = start.clone().requires_grad_()
    adam = torch.optim.Adam([reference], lr=0.05)
    rowwise = RowwiseAdam(start.clone(), lr=0.05)
    for grad in grads:  # every row in every step: torch's Adam
        reference.grad = grad
        adam.step()
        rowwise.step(torch.arange(6), grad)
    torch.testing.assert_close(rowwise.parameters, reference.detach(), rtol=1e-13, atol=1e-13)

    # rows outside the batch do not move, and a row's moments and bias corrections advance only with its own steps
    lazy = RowwiseAdam(start.clone(), lr=0.05)
    alone = RowwiseAdam(start[:, [4]].clone(), lr=0.05)
    for step, grad in enumerate(grads):
        rows = torch.tensor([4, 1]) if step % 2 else torch.tensor([0, 2])
        before = lazy.parameters.clone()
        lazy.step(rows, grad[:, rows])
        others = torch.ones(6, dtype=torch.bool)
        others[rows] = False
        assert torch.equal(lazy.parameters[:, others], before[:, others])
        if step % 2:
            alone.step(torch.tensor([0]), grad[:, [4]])
    torch.testing.assert_close(lazy.parameters[:, [4]], alone.parameters, rtol=1e-13, atol=1e-13)


def two_slides(qc_samples):
    """The bundled simulated samples (60 spots each, one slide each), counts kept sparse as a minibatch fit reads
    them."""
    samples = [read_qc_sample(qc_samples / f"{name}.qc.h5ad", 8.0) for name in ("sample1", "sample2")]
    return setup_mapping(samples, read_signatures(qc_samples / "signatures.csv"), min_shared_genes=10,
                         sparse_counts=True)


def test_minibatch_fit_same_seed_same_numbers(qc_samples):
    setup = two_slides(qc_samples)
    first, again, other = (fit_mapping(setup, 6, 0.02, seed=seed, progress=False, batch_size=25)
                           for seed in (4, 4, 5))
    assert torch.equal(first.guide_parameters, again.guide_parameters)
    np.testing.assert_array_equal(first.loss, again.loss)
    assert first.loss.shape == (6,)  # one -ELBO per epoch
    assert not torch.equal(first.guide_parameters, other.guide_parameters)


def test_every_spot_takes_one_step_per_epoch(qc_samples):
    setup = two_slides(qc_samples)
    steps = MinibatchSteps(setup.data, setup.priors, 0.02, torch.Generator().manual_seed(0))
    epochs = MinibatchEpochs(setup.data.n_locations, 25, 3, 0, torch.device("cpu"), steps.step)
    for epoch in range(3):
        epochs.run(epoch, lambda *_: None)
    assert epochs.steps_per_epoch == 5  # 120 spots: 4 batches of 25 and one of 20
    assert torch.equal(steps.local_optimizer.steps, torch.full_like(steps.local_optimizer.steps, 3))


def test_map_command_trains_on_minibatches_and_says_so(qc_samples, tmp_path, caplog):
    command = ["map", "--spatial", str(qc_samples / "sample1.qc.h5ad"), str(qc_samples / "sample2.qc.h5ad"),
               "--signatures", str(qc_samples / "signatures.csv"), "--n-cells-per-location", "8", "--max-epochs",
               "25", "--batch-size", "50", "--lr", "0.02", "--device", "cpu", "--min-shared-genes", "10",
               "--outdir", str(tmp_path)]
    with caplog.at_level(logging.INFO, logger="tissuemap"):
        result = CliRunner().invoke(main, command)
    assert result.exit_code == 0, result.output
    assert "50 spots per step, 3 steps per epoch" in caplog.text
    assert "--max-epochs 25 counts passes over the data" in caplog.text
    history = json.loads((tmp_path / "sample1" / "sample1.mapping_history.json").read_text())
    assert (history["batch_size"], history["loss_unit"], history["steps"], len(history["loss"])) == (50, "epoch", 25,
                                                                                                       25)
    rows = dict(mapping_rows(history))  # the sample report's table
    assert (rows["training epochs"], rows["spots per training step"]) == ("25", "50")
    abundance = ad.read_h5ad(tmp_path / "sample2" / "sample2.abundance.h5ad")
    assert np.isfinite(abundance.obsm["q05_cell_abundance_w_sf"].to_numpy()).all()
    result = CliRunner().invoke(main, [*command[:-2], "--batch-size", "0", "--outdir", str(tmp_path / "bad")])
    assert result.exit_code == 2 and "--batch-size" in result.output


def test_the_batch_likelihood_keeps_float32_precision_at_large_alpha(three_slides):
    # a Poisson-like gene's guide can draw alpha = 1/v^2 of 1e10 and more (the full-data objective's side:
    # test_mapping.py); one batch of every location is the full data
    dense, sparse = three_slides
    parameters = initial_guide_parameters(dense, PRIORS)
    layout = SplitLayout(MinibatchObjective(sparse, PRIORS).layout.layout)
    global_part, local = layout.split(parameters)
    layout.global_sites(global_part[0])["v_eg"].fill_(math.log(1e-5))
    full_form, batch_form = {}, {}
    for dtype in (torch.float64, torch.float32):
        data = dataclasses.replace(dense, **{field.name: getattr(dense, field.name).to(dtype)
                                             for field in dataclasses.fields(dense) if field.name != "batch_index"})
        objective = MinibatchObjective(data, PRIORS)
        batch = objective.batch(torch.arange(24))
        batch_form[dtype] = float(objective.negative_elbo(global_part.to(dtype), local.to(dtype),
                                                          torch.zeros(layout.global_size, dtype=dtype),
                                                          torch.zeros(24, layout.local_width, dtype=dtype), batch))
        full_form[dtype] = float(MappingObjective(data, PRIORS).negative_elbo(
            layout.join(global_part, local).to(dtype), torch.zeros(parameters.shape[1], dtype=dtype)))
    assert batch_form[torch.float64] == pytest.approx(full_form[torch.float64], rel=1e-12)
    assert batch_form[torch.float32] == pytest.approx(batch_form[torch.float64], rel=1e-5)
    assert batch_form[torch.float32] == pytest.approx(full_form[torch.float32], rel=1e-5)


def test_sparse_set_up_stores_each_count_above_zero_once(qc_samples):
    samples = [read_qc_sample(qc_samples / f"{name}.qc.h5ad", 8.0) for name in ("sample1", "sample2")]
    counts = samples[0].adata.X
    counts.data[:3] = 0  # explicit zeros, as some writers leave them
    signatures = read_signatures(qc_samples / "signatures.csv")
    sparse, dense = (setup_mapping(samples, signatures, min_shared_genes=10, sparse_counts=flag) for flag in (True, False))
    values = sparse.data.counts.values()
    assert (values > 0).all() and values.numel() == int((dense.data.counts > 0).sum())
    assert torch.equal(sparse.data.counts.to_dense(), dense.data.counts)
