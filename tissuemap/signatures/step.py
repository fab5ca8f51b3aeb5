"""``tissuemap signatures`` as one function (:func:`estimate_signatures`: check, code the design, fit or average,
export) and its files (:func:`write_signature_outputs`)."""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from tissuemap.defaults import (
    SIGNATURES_BATCH_SIZE,
    SIGNATURES_LR,
    SIGNATURES_MAX_EPOCHS,
    SIGNATURES_METHOD,
    SIGNATURES_METHODS,
    SIGNATURES_SEED,
    TRAINING_DEVICE,
)
from tissuemap.errors import InputError
from tissuemap.log import logger
from tissuemap.signatures.design import reference_design, type_average_counts
from tissuemap.signatures.export import (
    SIGNATURE_SITE,
    SUMMARY_STATS,
    expected_reference_counts,
    signature_table,
    store_signatures,
)
from tissuemap.signatures.fit import fit_regression


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


def estimate_signatures(
    adata,
    labels_key: str,
    batch_key: str | None = None,
    covariate_keys: Sequence[str] = (),
    method: str = SIGNATURES_METHOD,
    max_epochs: int = SIGNATURES_MAX_EPOCHS,
    batch_size: int = SIGNATURES_BATCH_SIZE,
    lr: float = SIGNATURES_LR,
    device: str = TRAINING_DEVICE,
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
        posterior, training = fit_regression(adata, design, max_epochs, batch_size, lr, seed, torch_device,
                                             count_storage, checkpoint, threads)
        summaries = {stat: posterior[SIGNATURE_SITE][stat].T for stat in SUMMARY_STATS}
        record.update(training, device=str(torch_device))
        for stat in SUMMARY_STATS:
            mod[f"post_sample_{stat}"] = {site: stats[stat] for site, stats in posterior.items()}

    record["settings"] = settings
    store_signatures(adata, design, summaries, mod, settings)
    return record


def write_signature_outputs(adata, record: dict, folder: str | os.PathLike, prefix: str = "reference") -> None:
    """Write the step's files into ``folder``: ``signatures.csv`` (genes × types), ``{prefix}.signatures.h5ad``
    (the reference with the signatures in ``varm`` and ``uns['mod']``), ``{prefix}.signatures_history.json`` (the
    run's record) and the QC plots of :func:`tissuemap.plotting.signatures.plot_signature_qc`."""
    from tissuemap.plotting.signatures import plot_signature_qc

    folder = Path(folder)
    table = signature_table(adata)
    table.to_csv(folder / "signatures.csv")
    adata.write_h5ad(folder / f"{prefix}.signatures.h5ad")
    (folder / f"{prefix}.signatures_history.json").write_text(json.dumps(record, indent=2) + "\n")
    averages = None
    if record["method"] == "nb":  # the mean method's signatures are the averages
        labels = adata.obs[record["settings"]["labels_key"]].astype(str)
        averages = type_average_counts(sp.csr_matrix(adata.X), table.columns.get_indexer(labels), table.shape[1]).T
    plot_signature_qc(adata, record, folder, prefix, signatures=table, averages=averages,
                      expected_counts=lambda cells: expected_reference_counts(adata, cells))
