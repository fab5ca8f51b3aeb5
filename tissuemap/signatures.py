"""Reference cell-type signatures (spec §2): the expression of every gene in every cell type, cleaned of batch,
ambient RNA and technology effects by negative binomial regression (``method="nb"``), or plain per-type average
counts (``method="mean"``, for batch-free or non-UMI references).

The regression's Pyro module is :mod:`tissuemap.models.regression`; this module sets up its data from AnnData,
trains it and exports the posterior in the cell2location package's layout:

- ``adata.varm['{k}_per_cluster_mu_fg']`` for k in means, stds, q05, q95: genes × types tables with columns
  ``{k}_per_cluster_mu_fg_{celltype}``;
- ``adata.uns['mod']``: ``factor_names`` (cell types), ``batch_names``, ``covariate_level_names``, ``settings``
  and ``post_sample_{k}`` (every site's posterior summary, name -> array).

Reproducibility: ``seed`` seeds Pyro's sampling (torch's global generator) and the minibatch order (a generator of
its own); training runs under ``torch.use_deterministic_algorithms`` (warn only), which makes the gradients of the
per-cell gathers add up in a fixed order. On a CPU the same seed, reference, options and thread count give bitwise
equal signatures, also across an interruption and ``--resume``; on a GPU, runs are expected to agree to about 1e-6
relative per step (cuBLAS reductions), not bit for bit.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from tissuemap.convergence import judge_convergence, log_convergence
from tissuemap.defaults import (
    SIGNATURES_BATCH_SIZE,
    SIGNATURES_LR,
    SIGNATURES_MAX_EPOCHS,
    SIGNATURES_METHOD,
    SIGNATURES_METHODS,
    SIGNATURES_SEED,
)
from tissuemap.errors import InputError
from tissuemap.log import counted, logger

SUMMARY_STATS = ("means", "stds", "q05", "q95")
SIGNATURE_SITE = "mu_fg"
# Name of the single batch when the reference has no batch column.
ONE_BATCH = "all"
# The count matrix is held dense on the device when it takes at most this share of the free memory, else as
# padded sparse rows; the rest is left for the minibatch's tensors and their gradients.
DENSE_MEMORY_SHARE = 0.5
COUNT_STORAGES = ("auto", "dense", "sparse")
# Counts copied to the device at a time when densifying (64 MiB of float32).
DENSE_BLOCK_VALUES = 2**24


def varm_key(stat: str) -> str:
    """``varm`` key of a posterior summary of the signatures, e.g. ``means_per_cluster_mu_fg``."""
    return f"{stat}_per_cluster_{SIGNATURE_SITE}"


@dataclass(frozen=True)
class ReferenceDesign:
    """Which ``obs`` columns feed the regression and how their values are coded: set up once, read everywhere.

    Attributes
    ----------
    labels_key, batch_key, covariate_keys
        The ``obs`` columns (``batch_key`` ``None``: one batch).
    cell_types, batches
        Names, in code order.
    covariate_levels
        ``"{column}={level}"`` for every level of every covariate, stacked in ``covariate_keys`` order.
    type_ids, batch_ids
        Per cell, its code (int64).
    level_ids
        Cells × covariates: each cell's level of each covariate as an index into ``covariate_levels``.
    """

    labels_key: str
    batch_key: str | None
    covariate_keys: tuple[str, ...]
    cell_types: tuple[str, ...]
    batches: tuple[str, ...]
    covariate_levels: tuple[str, ...]
    type_ids: np.ndarray
    batch_ids: np.ndarray
    level_ids: np.ndarray


def _codes(adata, column: str, option: str) -> tuple[np.ndarray, tuple[str, ...]]:
    if column not in adata.obs.columns:
        available = ", ".join(map(repr, adata.obs.columns)) or "none"
        raise InputError(f"reference: obs has no column {column!r} (given as {option}); available columns: {available}")
    values = pd.Categorical(adata.obs[column].astype(str))
    return values.codes.astype(np.int64), tuple(map(str, values.categories))


def reference_design(adata, labels_key: str, batch_key: str | None = None,
                     covariate_keys: Sequence[str] = ()) -> ReferenceDesign:
    """Code the reference's cell types, batches and covariates (categories in sorted order)."""
    type_ids, cell_types = _codes(adata, labels_key, "--labels-key")
    if batch_key is None:
        batch_ids, batches = np.zeros(adata.n_obs, dtype=np.int64), (ONE_BATCH,)
    else:
        batch_ids, batches = _codes(adata, batch_key, "--batch-key")
    level_columns, covariate_levels = [], []
    for key in covariate_keys:
        codes, levels = _codes(adata, key, "--covariate-keys")
        level_columns.append(codes + len(covariate_levels))
        covariate_levels.extend(f"{key}={level}" for level in levels)
    level_ids = np.stack(level_columns, axis=1) if level_columns else np.zeros((adata.n_obs, 0), dtype=np.int64)
    return ReferenceDesign(labels_key, batch_key, tuple(covariate_keys), cell_types, batches, tuple(covariate_levels),
                           type_ids, batch_ids, level_ids)


def cell_groups(design: ReferenceDesign) -> tuple[np.ndarray, np.ndarray]:
    """Cells that share a mean under the regression: same type, batch and covariate levels.

    Returns
    -------
    group_ids
        Per cell, its group (int64).
    groups
        Groups × (1 + 1 + covariates): type, batch and covariate level codes of each group.
    """
    keys = np.column_stack([design.type_ids, design.batch_ids, design.level_ids])
    groups, group_ids = np.unique(keys, axis=0, return_inverse=True)
    return group_ids.ravel().astype(np.int64), groups


def type_average_counts(counts, type_ids: np.ndarray, n_types: int) -> np.ndarray:
    """Types × genes: the mean count of each gene over each type's cells (float64)."""
    n_cells = counts.shape[0]
    membership = sp.csr_matrix((np.ones(n_cells), (type_ids, np.arange(n_cells))), shape=(n_types, n_cells))
    totals = membership @ counts
    totals = totals.toarray() if sp.issparse(totals) else np.asarray(totals)
    return totals / np.bincount(type_ids, minlength=n_types)[:, None]


def _check_options(method: str, max_epochs: int, batch_size: int, lr: float) -> None:
    if method not in SIGNATURES_METHODS:
        raise InputError(f"--method: {method!r} is not one of {', '.join(SIGNATURES_METHODS)}")
    if max_epochs < 1:
        raise InputError(f"--max-epochs: {max_epochs} is below 1; train for at least one epoch "
                         f"(the package uses {SIGNATURES_MAX_EPOCHS})")
    if batch_size < 1:
        raise InputError(f"--batch-size: {batch_size} is below 1; give the cells per minibatch "
                         f"(default {SIGNATURES_BATCH_SIZE})")
    if not lr > 0 or not math.isfinite(lr):
        raise InputError(f"--lr: {lr} is not a positive learning rate; the package uses {SIGNATURES_LR}")


def _available_host_memory() -> int | None:
    """Bytes of RAM available to new allocations (Linux ``MemAvailable``); ``None`` where it cannot be read."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class DeviceCounts:
    """The reference's count matrix resident on the training device, handing out dense minibatch rows.

    Dense float32 when it fits (``DENSE_MEMORY_SHARE`` of the free memory), else padded sparse rows: every cell's
    non-zero (gene, count) pairs padded with (0, 0) to the longest row, so a minibatch is two gathers and a
    scatter-add on the device, with no host round trip.
    """

    def __init__(self, counts, device, storage: str = "auto"):
        import torch

        if storage not in COUNT_STORAGES:
            raise ValueError(f"storage must be one of {COUNT_STORAGES}, not {storage!r}")
        counts = sp.csr_matrix(counts, dtype=np.float32)
        self.n_cells, self.n_genes = counts.shape
        self.device = device
        if storage == "auto":
            dense_bytes = 4 * self.n_cells * self.n_genes
            if device.type == "cuda":
                available = torch.cuda.mem_get_info(device)[0]
            else:
                available = _available_host_memory()
            storage = "dense" if available is None or dense_bytes <= DENSE_MEMORY_SHARE * available else "sparse"
        self.storage = storage
        if storage == "dense":
            # densified in blocks of rows, so the host never holds a dense copy of the whole matrix
            self.dense = torch.empty(self.n_cells, self.n_genes, device=device)
            block = max(1, DENSE_BLOCK_VALUES // max(self.n_genes, 1))
            for start in range(0, self.n_cells, block):
                self.dense[start:start + block] = torch.from_numpy(counts[start:start + block].toarray()).to(device)
        else:
            lengths = np.diff(counts.indptr)
            width = max(int(lengths.max(initial=0)), 1)
            rows = np.repeat(np.arange(self.n_cells), lengths)
            slots = np.arange(counts.nnz) - counts.indptr[rows]
            genes = np.zeros((self.n_cells, width), dtype=np.int32)  # widened per minibatch: a third less memory
            values = np.zeros((self.n_cells, width), dtype=np.float32)
            genes[rows, slots] = counts.indices
            values[rows, slots] = counts.data
            self.genes = torch.from_numpy(genes).to(device)
            self.values = torch.from_numpy(values).to(device)

    def rows(self, cell_ids):
        """Dense float32 counts of the cells ``cell_ids`` (a long tensor on the device), cells × genes."""
        import torch

        if self.storage == "dense":
            return self.dense.index_select(0, cell_ids)
        batch = torch.zeros(len(cell_ids), self.n_genes, device=self.device)
        # padding adds 0 to gene 0; adding, not assigning, keeps it from overwriting a real count there
        return batch.scatter_add_(1, self.genes[cell_ids].long(), self.values[cell_ids])


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
             device, checkpoint=None, checkpoint_key: str = "") -> np.ndarray:
    """Minibatch SVI: each epoch visits every cell once in a seeded random order; returns -ELBO per epoch.

    The step losses stay on the device; they are read back only at the end of an epoch about once a second
    (:class:`tissuemap.progress.Progress`) for the progress and the divergence check, and at checkpoints; within a
    long epoch the progress shows the minibatches done. ``checkpoint`` (:class:`~tissuemap.checkpoint.Checkpointing`,
    epochs between saves) saves the guide, the optimiser, the losses and the random generators' states (Pyro's noise
    and the minibatch order), from which a resumed fit continues with the numbers of an uninterrupted one. SIGTERM
    or SIGINT stops the fit at the end of the epoch, with a checkpoint (:mod:`tissuemap.interruption`).
    """
    import pyro
    import torch

    from tissuemap.interruption import stop_on_signals, stop_training
    from tissuemap.models.regression import negative_elbo
    from tissuemap.progress import Progress

    steps_per_epoch = math.ceil(n_cells / batch_size)
    batch_order = torch.Generator(device=device)
    batch_order.manual_seed(seed)
    step_losses = torch.zeros(max_epochs, steps_per_epoch, device=device)
    epoch_losses = np.empty(0)
    with _deterministic_algorithms(), pyro.validation_enabled(False), stop_on_signals() as stop:
        guide(*minibatch(torch.arange(batch_size, device=device)))  # creates the guide's parameters
        optimiser = torch.optim.Adam(guide.parameters(), lr=lr)
        saved = checkpoint.load(checkpoint_key) if checkpoint is not None else None
        first_epoch = _restore_svi(saved, guide, optimiser, batch_order, step_losses) if saved is not None else 0
        with Progress(max_epochs, "signatures", "epoch", initial=first_epoch) as progress:
            for epoch in range(first_epoch, max_epochs):
                order = torch.randperm(n_cells, generator=batch_order, device=device)
                report = False  # the loss is read back at the end of an epoch in which progress was due
                for step, cell_ids in enumerate(order.split(batch_size)):
                    loss = negative_elbo(module.model, guide, *minibatch(cell_ids))
                    optimiser.zero_grad(set_to_none=True)
                    loss.backward()
                    optimiser.step()
                    step_losses[epoch, step] = loss.detach()
                    if progress.due():
                        report = True
                        if step + 1 < steps_per_epoch:  # within a long epoch: the count only
                            progress.update(epoch + (step + 1) / steps_per_epoch)
                if report or epoch + 1 == max_epochs:
                    # mean over the epoch's minibatches: each one's loss is already scaled to the whole reference
                    epoch_losses = step_losses[: epoch + 1].mean(1).cpu().numpy()
                    diverged = ~np.isfinite(epoch_losses)
                    if diverged.any():
                        raise InputError(
                            f"signature training diverged: the loss became NaN or infinite at epoch "
                            f"{int(np.flatnonzero(diverged)[0]) + 1}; check the reference holds raw UMI counts (not "
                            f"normalised), drop cells or genes with extreme counts, or lower --lr (now {lr})"
                        )
                    progress.update(epoch + 1, f"loss {epoch_losses[-1]:.4g}")
                if checkpoint is not None and checkpoint.due(epoch + 1, max_epochs):
                    checkpoint.save(_svi_state(epoch + 1, guide, optimiser, batch_order, step_losses),
                                    checkpoint_key)
                if stop.signal_name is not None:
                    stop_training(stop, checkpoint,
                                  lambda: _svi_state(epoch + 1, guide, optimiser, batch_order, step_losses),
                                  checkpoint_key, epoch + 1, max_epochs, "epochs")
    return epoch_losses


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


def _train_regression(adata, design: ReferenceDesign, max_epochs: int, batch_size: int, lr: float, seed: int,
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
        if threads is not None:
            from tissuemap.threads import use_threads

            use_threads(threads)  # again: a library may have changed it since the step started
        training_threads = torch.get_num_threads()
        epoch_losses = _run_svi(module, guide, minibatch, n_cells, max_epochs, batch_size, lr, seed, device,
                                checkpoint, key)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
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


def estimate_signatures(
    adata,
    labels_key: str,
    batch_key: str | None = None,
    covariate_keys: Sequence[str] = (),
    method: str = SIGNATURES_METHOD,
    max_epochs: int = SIGNATURES_MAX_EPOCHS,
    batch_size: int = SIGNATURES_BATCH_SIZE,
    lr: float = SIGNATURES_LR,
    device: str = "auto",
    seed: int = SIGNATURES_SEED,
    count_storage: str = "auto",
    checkpoint=None,
    threads: int | None = None,
) -> dict:
    """Estimate each cell type's expression signature from an annotated single-cell reference.

    ``method="nb"`` fits cell2location's negative binomial regression (spec §2: signatures, batch detection,
    per-batch ambient RNA, covariate gene effects; several covariates' effects are summed, as in the package) by
    minibatch SVI: AutoNormal guide, -ELBO, Adam; an epoch is one pass over the cells in random minibatches.
    ``method="mean"`` takes per-type average counts and ignores batches and covariates.

    Parameters
    ----------
    adata
        Cells × genes with raw counts in ``X`` (as :func:`tissuemap.reference.read_reference` returns it).
    labels_key
        ``obs`` column with each cell's type.
    batch_key
        ``obs`` column with each cell's batch (10x reaction / sample); ``None``: one batch.
    covariate_keys
        Further categorical ``obs`` columns with technical effects (technology, donor...).
    method
        ``"nb"`` or ``"mean"``.
    max_epochs, batch_size, lr
        Passes over the cells, cells per minibatch, Adam's learning rate.
    device
        ``"auto"``, ``"cpu"`` or ``"cuda"``.
    seed
        Seeds Pyro, torch and the minibatch order: the same seed, input and device give the same signatures.
    count_storage
        ``"auto"``, ``"dense"`` or ``"sparse"``: how the counts are held on the device (see :class:`DeviceCounts`).
    checkpoint
        :class:`~tissuemap.checkpoint.Checkpointing` (``every`` in epochs) for ``nb``: save the fit's state and, with
        ``resume``, continue from it; a resumed fit gives the signatures of an uninterrupted one (bitwise on a CPU).
    threads
        torch's CPU threads for ``nb`` (and those of libraries that start later), set now and again right before
        training; ``None`` leaves them as they are.

    Returns
    -------
    The run's record (JSON-serialisable): ``elbo`` (-ELBO per epoch, each the mean of its minibatches' losses
    scaled to the whole reference; empty for ``mean``), ``converged`` and ``convergence`` (for ``nb``: whether the
    loss levelled off, :func:`tissuemap.convergence.judge_convergence`), ``training_seconds``, ``export_seconds``,
    ``device``, ``epochs``, ``threads`` (torch's CPU threads when training started; for ``nb``), sizes, and
    ``settings``. Writes ``adata.varm['{k}_per_cluster_mu_fg']`` (k = means, stds, q05, q95;
    only means for ``mean``) and ``adata.uns['mod']``.
    """
    _check_options(method, max_epochs, batch_size, lr)
    design = reference_design(adata, labels_key, batch_key, covariate_keys)
    settings = {
        "method": method, "labels_key": labels_key, "batch_key": batch_key, "covariate_keys": list(covariate_keys),
        "max_epochs": max_epochs, "batch_size": batch_size, "lr": lr, "device": device, "seed": seed,
    }
    record = {
        "method": method,
        "n_cells": adata.n_obs,
        "n_genes": adata.n_vars,
        "n_types": len(design.cell_types),
        "n_batches": len(design.batches),
        "n_covariate_levels": len(design.covariate_levels),
    }
    mod = {
        "factor_names": np.array(design.cell_types),
        "batch_names": np.array(design.batches),
        "covariate_level_names": np.array(design.covariate_levels, dtype=str),
    }
    if method == "mean":
        if batch_key is not None or covariate_keys:
            logger.info("--method mean averages counts per type: the batch and covariate columns are not used")
        started = time.perf_counter()
        averages = type_average_counts(sp.csr_matrix(adata.X), design.type_ids, len(design.cell_types))
        summaries = {"means": averages.T}
        record.update(elbo=[], device="cpu", epochs=0, training_seconds=time.perf_counter() - started,
                      export_seconds=0.0)
        logger.info("Averaged counts of %d cells per cell type (%d types)", adata.n_obs, len(design.cell_types))
    else:
        from tissuemap.models.device import resolve_device

        if threads is not None:
            from tissuemap.threads import use_threads

            use_threads(threads)
        torch_device = resolve_device(device)
        posterior, training = _train_regression(adata, design, max_epochs, batch_size, lr, seed, torch_device,
                                                count_storage, checkpoint, threads)
        summaries = {stat: posterior[SIGNATURE_SITE][stat].T for stat in SUMMARY_STATS}
        record.update(training, device=str(torch_device))
        for stat in SUMMARY_STATS:
            mod[f"post_sample_{stat}"] = {site: stats[stat] for site, stats in posterior.items()}

    for stat, table in summaries.items():
        adata.varm[varm_key(stat)] = pd.DataFrame(
            np.asarray(table, dtype=np.float64), index=adata.var_names,
            columns=[f"{varm_key(stat)}_{name}" for name in design.cell_types],
        )
    record["settings"] = settings
    mod["settings"] = {key: value for key, value in settings.items() if value is not None}
    adata.uns["mod"] = mod
    return record


def signature_table(adata) -> pd.DataFrame:
    """Genes × cell types: the posterior mean signatures (``inf_aver``), columns named by cell type."""
    names = [str(name) for name in adata.uns["mod"]["factor_names"]]
    key = varm_key("means")
    table = adata.varm[key][[f"{key}_{name}" for name in names]]
    table = pd.DataFrame(table.to_numpy(), index=adata.var_names.copy(), columns=names)
    table.index.name = "gene"
    return table


def expected_reference_counts(adata, cells: np.ndarray) -> np.ndarray:
    """Cells × genes: counts of the reference cells ``cells`` (positions) expected under the fitted signatures.

    ``nb``: the regression mean with every site at its posterior mean; ``mean``: the average of the cell's type.
    """
    mod = adata.uns["mod"]
    settings = mod["settings"]
    design = reference_design(adata, settings["labels_key"], settings.get("batch_key"),
                              list(settings.get("covariate_keys", [])))
    if settings["method"] == "mean":
        return signature_table(adata).to_numpy().T[design.type_ids[cells]]
    import torch

    from tissuemap.models.regression import expected_counts

    means = {site: torch.as_tensor(np.asarray(value)) for site, value in mod["post_sample_means"].items()}
    expected = expected_counts(
        means["mu_fg"], means["y_e"], means["s_eg"], means.get("t_lg"),
        torch.as_tensor(design.type_ids[cells]), torch.as_tensor(design.batch_ids[cells]),
        torch.as_tensor(design.level_ids[cells]),
    )
    return expected.numpy()


def write_signature_outputs(adata, record: dict, folder: str | os.PathLike, prefix: str = "reference") -> None:
    """Write the step's files into ``folder``: ``signatures.csv`` (genes × types), ``{prefix}.signatures.h5ad``
    (the reference with the signatures in ``varm`` and ``uns['mod']``), ``{prefix}.signatures_history.json`` (the
    run's record) and the QC plots of :func:`tissuemap.plotting.signatures.plot_signature_qc`."""
    from tissuemap.plotting.signatures import plot_signature_qc

    folder = Path(folder)
    signature_table(adata).to_csv(folder / "signatures.csv")
    adata.write_h5ad(folder / f"{prefix}.signatures.h5ad")
    (folder / f"{prefix}.signatures_history.json").write_text(json.dumps(record, indent=2) + "\n")
    plot_signature_qc(adata, record, folder, prefix)
