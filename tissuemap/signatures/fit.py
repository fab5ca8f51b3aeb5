"""Training the reference regression (:func:`fit_regression`): its data on the device, minibatch SVI in the shared
loop of :mod:`tissuemap.training` under deterministic kernels, and the posterior summaries of every site."""

from __future__ import annotations

import contextlib
import math
import time

import numpy as np
import scipy.sparse as sp

from tissuemap.convergence import judge_convergence, log_convergence
from tissuemap.log import counted, logger
from tissuemap.signatures.data import DeviceCounts
from tissuemap.signatures.design import ReferenceDesign, cell_groups, type_average_counts


@contextlib.contextmanager
def _deterministic_algorithms():
    """Deterministic torch kernels while training: the gradients of the per-cell gathers are otherwise added up in
    an order that changes from run to run (threads on a CPU, atomics on a GPU), and the same seed would not give
    the same signatures."""
    import torch

    previous = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])


def _run_svi(module, guide, minibatch, n_cells: int, max_epochs: int, batch_size: int, lr: float, seed: int,
             device, checkpoint, checkpoint_key: str, threads: int | None) -> tuple[np.ndarray, int]:
    """Minibatch SVI in the shared loop (:mod:`tissuemap.training`): each epoch visits every cell once in a seeded
    random order. Returns the -ELBO per epoch (the mean of its minibatches' losses, each scaled to the whole
    reference) and torch's CPU threads when training started.

    ``checkpoint`` (:class:`~tissuemap.checkpoint.Checkpointing`, epochs between saves) saves the guide, the
    optimiser, the losses and the random generators' states (Pyro's noise and the minibatch order), from which a
    resumed fit continues with the numbers of an uninterrupted one. SIGTERM or SIGINT stops the fit at the end of the
    epoch, with a checkpoint (:mod:`tissuemap.interruption`).
    """
    import pyro
    import torch

    from tissuemap.interruption import stop_on_signals
    from tissuemap.models.regression import negative_elbo
    from tissuemap.training import MinibatchEpochs, TrainingLoop, resume_from, train

    def step(cell_ids):
        loss = negative_elbo(module.model, guide, *minibatch(cell_ids))
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        return loss.detach()

    epochs = MinibatchEpochs(n_cells, batch_size, max_epochs, seed, device, step)
    with _deterministic_algorithms(), pyro.validation_enabled(False), stop_on_signals() as stop:
        guide(*minibatch(torch.arange(batch_size, device=device)))  # creates the guide's parameters
        optimiser = torch.optim.Adam(guide.parameters(), lr=lr)
        first_epoch = resume_from(checkpoint, checkpoint_key, lambda state: _restore_svi(
            state, guide, optimiser, epochs.order, epochs.step_losses))
        run = train(TrainingLoop(
            name="signatures", unit="epoch", total=max_epochs, run_epoch=epochs.run, losses=epochs.losses,
            diverged=lambda epoch: (
                f"signature training diverged: the loss became NaN or infinite at epoch {epoch}; check the reference "
                f"holds raw UMI counts (not normalised), drop cells or genes with extreme counts, or lower --lr "
                f"(now {lr})"),
            state=lambda epoch: _svi_state(epoch, guide, optimiser, epochs.order, epochs.step_losses),
            device=device, checkpoint=checkpoint, checkpoint_key=checkpoint_key, stop=stop, threads=threads,
        ), first_epoch)
    return epochs.losses(max_epochs).cpu().numpy(), run.threads


def _svi_state(epoch: int, guide, optimiser, batch_order, step_losses) -> dict:
    """What the rest of the fit depends on after ``epoch`` epochs (the global torch generator drives Pyro's
    sampling, ``batch_order`` the minibatches)."""
    import torch

    return {
        "step": epoch,
        "guide": guide.state_dict(),
        "optimiser": optimiser.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "batch_order": batch_order.get_state(),
        "step_losses": step_losses[:epoch].cpu(),
    }


def _restore_svi(state: dict, guide, optimiser, batch_order, step_losses) -> int:
    """Put a saved state back (see :func:`_svi_state`); returns the epoch to continue from."""
    import torch

    guide.load_state_dict(state["guide"])
    optimiser.load_state_dict(state["optimiser"])
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"]:
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    batch_order.set_state(state["batch_order"])
    epoch = int(state["step"])
    step_losses[:epoch] = state["step_losses"].to(step_losses.device)
    return epoch


def fit_regression(adata, design: ReferenceDesign, max_epochs: int, batch_size: int, lr: float, seed: int,
                      device, count_storage: str, checkpoint=None, threads: int | None = None) -> tuple[dict, dict]:
    """Fit the regression; returns (posterior summaries as numpy arrays, training record). ``threads``: torch's CPU
    threads, applied right before training (``None``: as they are)."""
    import pyro
    import torch

    from tissuemap.models.regression import (
        CellGroups,
        RegressionModule,
        build_guide,
        cell_count_terms,
        posterior_summaries,
    )

    started = time.perf_counter()
    pyro.set_rng_seed(seed)
    csr = sp.csr_matrix(adata.X)
    if not csr.has_canonical_format:  # repeated (cell, gene) entries would be counted apart in log(x!)
        csr = csr.copy()
        csr.sum_duplicates()
    counts = DeviceCounts(csr, device, count_storage)
    n_cells, n_genes = counts.n_cells, counts.n_genes
    count_terms = cell_count_terms(csr, device)

    def on_device(array, dtype):
        return torch.as_tensor(np.ascontiguousarray(array), dtype=dtype, device=device)

    group_of_cell, group_table = cell_groups(design)
    groups = CellGroups(types=on_device(group_table[:, 0], torch.long),
                        batches=on_device(group_table[:, 1], torch.long),
                        levels=on_device(group_table[:, 2:], torch.long))
    group_ids = on_device(group_of_cell, torch.long)
    averages = on_device(type_average_counts(csr, design.type_ids, len(design.cell_types)), torch.float32)

    def minibatch(cell_ids):
        return counts.rows(cell_ids), group_ids[cell_ids], count_terms.rows(cell_ids), groups

    batch_size = min(batch_size, n_cells)
    steps_per_epoch = math.ceil(n_cells / batch_size)
    logger.info(
        "Regression: %d cells x %d genes, %s, %s, %s (%s sharing a mean); counts held %s on %s",
        n_cells, n_genes, counted(len(design.cell_types), "cell type"), counted(len(design.batches), "batch"),
        counted(len(design.covariate_levels), "covariate level"), counted(len(group_table), "group of cells",
                                                                         "groups of cells"),
        counts.storage, device,
    )
    logger.info("Training %s of %s of up to %s (lr %g, seed %d)", counted(max_epochs, "epoch"),
                counted(steps_per_epoch, "minibatch"), counted(batch_size, "cell"), lr, seed)
    module = RegressionModule(n_cells, n_genes, len(design.cell_types), len(design.batches),
                              len(design.covariate_levels)).to(device)
    # parameters kept in the guide itself, not Pyro's global store: a second fit in the same process starts afresh
    with pyro.settings.context(module_local_params=True):
        guide = build_guide(module, averages)
        key = ""
        if checkpoint is not None:
            from tissuemap.checkpoint import fingerprint

            settings = {"model": "signatures", "max_epochs": max_epochs, "batch_size": batch_size, "lr": lr,
                        "seed": seed, "device": device.type, "count_storage": counts.storage}
            key = fingerprint(settings, [csr.data, csr.indices, csr.indptr, group_of_cell, group_table])
        epoch_losses, training_threads = _run_svi(module, guide, minibatch, n_cells, max_epochs, batch_size, lr, seed,
                                                  device, checkpoint, key, threads)
        training_seconds = time.perf_counter() - started

        started = time.perf_counter()
        summaries = {
            site: {stat: value.cpu().numpy() for stat, value in stats.items()}
            for site, stats in posterior_summaries(guide, module.latent_sites).items()
        }
        export_seconds = time.perf_counter() - started
    logger.info("Trained in %.1f s (%.2f epochs/s); final -ELBO %.6g; posterior exported in %.2f s",
                training_seconds, max_epochs / training_seconds, epoch_losses[-1], export_seconds)
    convergence = judge_convergence(epoch_losses, "--max-epochs", "--regression-epochs")
    log_convergence(convergence, "the signature regression")
    record = {
        "elbo": [float(value) for value in epoch_losses],
        "converged": convergence["converged"],
        "convergence": convergence,
        "epochs": max_epochs,
        "steps_per_epoch": steps_per_epoch,
        "batch_size": batch_size,
        "count_storage": counts.storage,
        "threads": training_threads,
        "training_seconds": training_seconds,
        "export_seconds": export_seconds,
    }
    return summaries, record

