"""Spatial mapping with the cell2location model: data set-up, training, and export of the posterior to AnnData.

The steps, each a plain function:

1. :func:`read_spatial_sample` and :func:`read_signatures` read and check the inputs (QC'd ``NAME.qc.h5ad`` files
   and a genes × cell types signature table).
2. :func:`setup_mapping` subsets every sample and the signatures to their shared genes, in one order, stacks the
   samples (one batch per slide, each batch's spots contiguous) and computes the prior mean detection d̂.
3. :func:`fit_mapping` trains the mean-field guide: one full-data step per iteration, the whole data on the device,
   no host synchronisation inside the loop except about once a second (progress and NaN check, paced by
   :class:`tissuemap.progress.Progress`) and at checkpoints (:mod:`tissuemap.checkpoint`), from which an interrupted
   fit continues with the same numbers. Whether the loss levelled off is judged by :mod:`tissuemap.convergence`.
4. :func:`export_mapping` writes each sample's posterior into an AnnData, in the cell2location package's naming, with
   exact log-normal summaries of the guide (no posterior sampling).

:func:`write_mapping_outputs` writes the files of the ``tissuemap map`` command.

Reproducibility: the only randomness of a fit is the guide's noise, drawn from a ``torch.Generator`` seeded with
``seed`` (the guide starts deterministically at the prior means). On a CPU, the same seed, data, options, torch
version and thread count give bitwise-equal outputs, also when a run is interrupted and continued with ``--resume``
(the checkpoint holds the generator's state). On a GPU, repeated runs are expected to agree to about 1e-6 relative
per step, not bit for bit, and the small differences can grow over thousands of steps (posterior summaries then agree
to roughly 1e-3 relative): the objective adds each observed count once (its scatter-adds never hit an index twice, so
no atomics race), but cuBLAS may choose matrix-product algorithms whose reductions run in another order, the objective
is compiled with ``torch.compile`` on a GPU (fused reductions, checked against the plain objective to 1e-3), and
``torch.use_deterministic_algorithms`` is not switched on for mapping. CPU and GPU results differ at the same level.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from tissuemap.convergence import judge_convergence, log_convergence
from tissuemap.counts import check_raw_counts
from tissuemap.defaults import (
    MAPPING_DETECTION_ALPHA,
    MAPPING_LR,
    MAPPING_MAX_EPOCHS,
    MAPPING_MIN_SHARED_GENES,
    MAPPING_N_CELLS_PER_LOCATION,
    MAPPING_SEED,
)
from tissuemap.errors import InputError
from tissuemap.log import counted, logger
from tissuemap.samplesheet import validate_name

SUMMARIES = ("means", "stds", "q05", "q95")
# sites with one value per location, per batch, or shared by all (their export is sliced accordingly)
LOCATION_SITES = ("n_s", "b_s", "z_sr", "w_sf", "y_s")
BATCH_SITES = ("y_e", "m_e", "u_e", "s_eg", "v_eg")


@dataclass
class SpatialSample:
    """One QC'd Visium sample and the mapping hyper-parameters that apply to it."""

    name: str
    adata: object  # AnnData
    n_cells_per_location: float
    detection_alpha: float
    slide: str
    path: str
    # N̂ of every spot from a cell counts file (tissuemap.cell_counts), None: every spot has n_cells_per_location
    cell_counts: np.ndarray | None = None
    cell_counts_path: str = ""

    def spot_cells_prior(self) -> np.ndarray:
        """N̂ of every spot: its count from the cell counts file, else the sample's ``n_cells_per_location``."""
        if self.cell_counts is not None:
            return self.cell_counts
        return np.full(self.adata.n_obs, self.n_cells_per_location)


def _positive(value, what: str, where: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{where}: {what} {value!r} is not a number; give a positive number") from None
    if not (math.isfinite(number) and number > 0):
        raise InputError(f"{where}: {what} is {value!r}; it must be a positive number")
    return number


def check_training_options(max_epochs: int, lr: float) -> None:
    """Raise :class:`InputError` unless ``max_epochs`` >= 1 and ``lr`` > 0."""
    if not (isinstance(max_epochs, (int, np.integer)) and max_epochs >= 1):
        raise InputError(f"--max-epochs {max_epochs}: must be a whole number of at least 1")
    _positive(lr, "the learning rate", "--lr")


def read_spatial_sample(
    path: str | os.PathLike,
    n_cells_per_location: float | None = MAPPING_N_CELLS_PER_LOCATION,
    detection_alpha: float = MAPPING_DETECTION_ALPHA,
    plan: dict[str, dict] | None = None,
) -> SpatialSample:
    """Read one QC'd sample (``tissuemap qc`` output) and the hyper-parameters to map it with.

    The sample's ``n_cells_per_location``, ``detection_alpha`` and ``slide`` come from its row of the mapping plan
    (``plan``, :func:`tissuemap.plan.read_plan`), else from ``uns['tissuemap']`` of the file (``tissuemap qc`` run
    by hand with those options), else from the arguments. The sample is named by ``uns['tissuemap']['sample']``,
    else by its file name without ``.qc.h5ad``.

    Raises
    ------
    InputError
        If the file cannot be read, lacks counts or coordinates, has no raw integer counts, repeats gene names, or a
        hyper-parameter is not positive.
    """
    import anndata as ad

    path = Path(path)
    try:
        adata = ad.read_h5ad(path)
    except (OSError, KeyError) as err:
        raise InputError(
            f"{path}: cannot be read as an h5ad file ({err}); give a NAME.qc.h5ad from tissuemap qc"
        ) from None
    if adata.X is None or adata.n_obs == 0 or adata.n_vars == 0 or "spatial" not in adata.obsm:
        raise InputError(
            f"{path}: holds no count matrix (X), no spots or no spot coordinates (obsm['spatial']); "
            "give a NAME.qc.h5ad from tissuemap qc"
        )
    check_raw_counts(adata.X, str(path), adata.obs_names, adata.var_names)
    repeated = adata.var_names[adata.var_names.duplicated()]
    if len(repeated):
        raise InputError(f"{path}: gene {repeated[0]!r} appears more than once in var_names; make gene names unique")
    settings = dict(adata.uns.get("tissuemap", {}))
    name = validate_name(str(settings.get("sample") or path.name.removesuffix(".h5ad").removesuffix(".qc")),
                         where=str(path))
    where = f"{path}: uns['tissuemap']"
    if plan is not None:
        if name not in plan:
            raise InputError(f"{path}: sample {name!r} is not in the mapping plan (--plan); plan this samplesheet's "
                             "samples with tissuemap plan")
        settings, where = plan[name], "--plan"
    if "n_cells_per_location" not in settings and n_cells_per_location is None:
        raise InputError(f"{path}: no n_cells_per_location for sample {name!r}; give --n-cells-per-location (the "
                         "expected cells per spot) or --plan")
    n_cells = _positive(settings.get("n_cells_per_location", n_cells_per_location), "n_cells_per_location",
                        where if "n_cells_per_location" in settings else "--n-cells-per-location")
    alpha = _positive(settings.get("detection_alpha", detection_alpha), "detection_alpha",
                      where if "detection_alpha" in settings else "--detection-alpha")
    slide = str(settings.get("slide") or name)
    logger.info("%s: %d spots x %d genes from %s (N_cells_per_location %g, detection_alpha %g, slide %s)",
                name, adata.n_obs, adata.n_vars, path, n_cells, alpha, slide)
    return SpatialSample(name, adata, n_cells, alpha, slide, str(path))


def read_signatures(path: str | os.PathLike) -> pd.DataFrame:
    """Read reference signatures: a CSV with genes as rows (first column: gene names) and one column per cell type.

    Raises
    ------
    InputError
        If the file cannot be parsed, holds fewer than one type, repeats a gene or type, or holds missing, negative or
        non-numeric values, or a type whose signature is all zero.
    """
    path = Path(path)
    try:
        signatures = pd.read_csv(path, index_col=0)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise InputError(
            f"{path}: cannot be read as a CSV table ({err}); give genes as rows and cell types as columns"
        ) from None
    if signatures.shape[1] == 0 or signatures.shape[0] == 0:
        raise InputError(f"{path}: no cell type columns or no gene rows; give genes as rows and cell types as columns")
    signatures.index = signatures.index.astype(str)
    signatures.columns = signatures.columns.astype(str)
    for labels, what in ((signatures.index, "gene"), (signatures.columns, "cell type")):
        repeated = labels[labels.duplicated()]
        if len(repeated):
            raise InputError(f"{path}: {what} {repeated[0]!r} appears more than once; make {what} names unique")
    non_numeric = [column for column in signatures.columns if not pd.api.types.is_numeric_dtype(signatures[column])]
    if non_numeric:
        raise InputError(f"{path}: column {non_numeric[0]!r} is not numeric; every cell type column must hold numbers")
    values = signatures.to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values) | (values < 0)
    if bad.any():
        row, column = np.argwhere(bad)[0]
        raise InputError(
            f"{path}: row {signatures.index[row]!r}, column {signatures.columns[column]!r} is {values[row, column]}; "
            "signatures must be finite and non-negative (expected counts per cell)"
        )
    return signatures.astype(np.float64)


@dataclass
class MappingSetup:
    """The model's data and how it maps back to the samples.

    Attributes
    ----------
    samples
        The samples in fitting order (grouped by slide).
    rows
        Sample name -> its slice of locations in ``data``.
    sample_batch
        Sample name -> its batch index.
    batch_names
        Slide of each batch.
    genes
        Shared genes as the samples name them (``var_names``), in the model's order.
    cell_types
        Signature columns, in the model's order.
    data
        The tensors the model conditions on (:class:`~tissuemap.models.cell2location.MappingData`).
    priors
        Fixed hyper-parameters.
    gene_match
        How signatures and samples were matched (:class:`~tissuemap.genes.GeneMatch`).
    """

    samples: list[SpatialSample]
    rows: dict[str, slice]
    sample_batch: dict[str, int]
    batch_names: list[str]
    genes: list[str]
    cell_types: list[str]
    data: object
    priors: object
    gene_match: object
    seconds: float = 0.0


def _shared_spatial_genes(samples: list[SpatialSample]) -> pd.DataFrame:
    """``var`` of the first sample restricted to the genes every sample has (first sample's order)."""
    var = samples[0].adata.var
    common = var.index
    for sample in samples[1:]:
        common = common[common.isin(sample.adata.var_names)]
    if len(common) < len(var):
        logger.info("%d genes of %s are missing from another sample and left out",
                    len(var) - len(common), samples[0].name)
    return var.loc[common]


def detection_mean(
    total_counts: np.ndarray, n_cells: np.ndarray, batch_index: np.ndarray, signatures: np.ndarray
) -> float:
    """d̂, the prior mean of detection y_e (spec §3, as the package computes it).

    ``(mean over locations of total count / N̂) / (mean over types of Σ_g g_fg)``, the location mean taken per batch
    and then averaged over batches, so that every slide weighs the same.
    """
    per_location = total_counts / n_cells
    per_batch = [per_location[batch_index == batch].mean() for batch in range(batch_index.max() + 1)]
    return float(np.mean(per_batch) / signatures.sum(axis=1).mean())


def setup_mapping(
    samples: list[SpatialSample],
    signatures: pd.DataFrame,
    min_shared_genes: int = MAPPING_MIN_SHARED_GENES,
    device=None,
    signatures_name: str = "signatures",
    priors=None,
) -> MappingSetup:
    """Subset the samples and the signatures to their shared genes and stack the samples into the model's tensors.

    Samples on the same slide form one batch; batches are numbered in order of first appearance, and each batch's
    samples are placed together so that every batch is one contiguous block of locations.

    Parameters
    ----------
    samples
        QC'd samples (:func:`read_spatial_sample`), names unique.
    signatures
        Genes × cell types (:func:`read_signatures`).
    min_shared_genes
        Fewest shared genes accepted.
    device
        ``torch.device`` for the tensors (CPU when ``None``).
    signatures_name
        How messages name the signatures (their file).
    priors
        :class:`~tissuemap.models.cell2location.MappingPriors`; the package's defaults when ``None``.

    Raises
    ------
    InputError
        If sample names repeat, too few genes are shared, or a cell type's signature is zero on the shared genes.
    """
    import torch

    from tissuemap.genes import match_genes
    from tissuemap.models.cell2location import MappingData, MappingPriors

    started = time.perf_counter()
    names = [sample.name for sample in samples]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        paths = [sample.path for sample in samples if sample.name == repeated[0]]
        raise InputError(f"sample name {repeated[0]!r} is given twice ({', '.join(paths)}); map each sample once")
    batch_names = list(dict.fromkeys(sample.slide for sample in samples))
    ordered = sorted(samples, key=lambda sample: batch_names.index(sample.slide))

    spatial_var = _shared_spatial_genes(ordered)
    spatial_name = ordered[0].path if len(ordered) == 1 else f"the {len(ordered)} spatial samples"
    match = match_genes(pd.DataFrame(index=signatures.index), spatial_var, min_shared_genes,
                        reference_name=signatures_name, spatial_name=spatial_name)
    signature_matrix = signatures.loc[match.reference_names].to_numpy(dtype=np.float32).T  # (F, G)
    empty = np.flatnonzero(signature_matrix.sum(axis=1) == 0)
    if len(empty):
        raise InputError(
            f"{signatures_name}: cell type {signatures.columns[empty[0]]!r} has an all-zero signature on the "
            f"{match.n_shared} genes shared with the spatial data; remove it from the signatures"
        )

    counts = np.empty((sum(sample.adata.n_obs for sample in ordered), match.n_shared), dtype=np.float32)
    rows, sample_batch, start = {}, {}, 0
    n_cells, alpha, batch_index = (np.empty(len(counts), dtype=np.float32) for _ in range(3))
    sample_n_cells = np.empty(len(counts), dtype=np.float64)
    for sample in ordered:
        end = start + sample.adata.n_obs
        block = sample.adata[:, match.spatial_names].X
        counts[start:end] = block.toarray() if sp.issparse(block) else np.asarray(block)
        rows[sample.name] = slice(start, end)
        sample_batch[sample.name] = batch_names.index(sample.slide)
        n_cells[start:end], alpha[start:end] = sample.spot_cells_prior(), sample.detection_alpha
        # d̂ takes one N̂ per sample: with cell counts, their mean (a spot's count of 0 would dominate a mean of ratios)
        sample_n_cells[start:end] = n_cells[start:end].mean(dtype=np.float64)
        batch_index[start:end] = sample_batch[sample.name]
        start = end
    batch_index = batch_index.astype(np.int64)
    totals = counts.sum(axis=1, dtype=np.float64)
    if (totals == 0).any():
        logger.warning("%d spots have no count on the shared genes; their detection sensitivity will be ~0",
                       int((totals == 0).sum()))
    d_hat = detection_mean(totals, sample_n_cells, batch_index, signature_matrix.astype(np.float64))

    device = torch.device("cpu") if device is None else device
    data = MappingData(
        counts=torch.from_numpy(counts).to(device),
        batch_index=torch.from_numpy(batch_index).to(device),
        signatures=torch.from_numpy(signature_matrix).to(device),
        n_cells_per_location=torch.from_numpy(n_cells).reshape(-1, 1).to(device),
        detection_alpha=torch.from_numpy(alpha).reshape(-1, 1).to(device),
        detection_mean=torch.tensor(d_hat, dtype=torch.float32, device=device),
    )
    logger.info(
        "Mapping %d spots (%s) x %d genes onto %d cell types in %s; detection mean d = %.4g",
        len(counts), ", ".join(names), match.n_shared, len(signatures.columns), counted(len(batch_names), "batch"),
        d_hat,
    )
    return MappingSetup(
        samples=ordered, rows=rows, sample_batch=sample_batch, batch_names=batch_names,
        genes=list(match.spatial_names), cell_types=list(signatures.columns), data=data,
        priors=priors if priors is not None else MappingPriors(), gene_match=match,
        seconds=time.perf_counter() - started,
    )


@dataclass
class MappingFit:
    """A trained guide and how training went."""

    guide_parameters: object  # (2, P) torch tensor: locations and unconstrained scales
    loss: np.ndarray  # −ELBO per step, Σ log Γ(x+1) included
    device: str
    steps: int
    lr: float
    seed: int
    cuda_graph: bool
    compiled: bool
    timed_steps: int  # steps inside the timed training loop (warm-up steps before a CUDA graph capture excluded)
    threads: int  # torch's CPU threads when the training loop started
    seconds: dict = field(default_factory=dict)
    convergence: dict = field(default_factory=dict)  # tissuemap.convergence.judge_convergence of the loss
    early_stopping: dict | None = None  # the rule and the step it stopped at (EarlyStopping.record); None: off

    @property
    def iterations_per_second(self) -> float:
        return self.timed_steps / self.seconds["training"] if self.seconds.get("training") else float("nan")


def _nan_message(step: int) -> str:
    return (
        f"training diverged (the ELBO became NaN or infinite at step {step}); check that the reference signatures "
        "match the tissue (same species, same genes) and that --n-cells-per-location suits it, or lower --lr"
    )


def fit_mapping(
    setup: MappingSetup,
    max_epochs: int = MAPPING_MAX_EPOCHS,
    lr: float = MAPPING_LR,
    seed: int = MAPPING_SEED,
    cuda_graph: bool = True,
    compile_objective: bool | None = None,
    progress: bool = True,
    checkpoint=None,
    threads: int | None = None,
    stop=None,
    early_stopping=None,
) -> MappingFit:
    """Train the cell2location guide on ``setup``'s data: ``max_epochs`` full-data steps of Adam (fewer with
    ``early_stopping``).

    The optimiser is torch's Adam with its defaults, which is what the package trains with (scvi-tools'
    ``PyroTrainingPlan`` builds ``pyro.optim.Adam(lr)``, a torch Adam, whatever the package's docstrings say of
    ``ClippedAdam``): the same data, signatures and seed-free settings follow the package's path.

    Parameters
    ----------
    setup
        From :func:`setup_mapping`; its tensors' device is used.
    max_epochs
        Training steps (each sees all the data, as the package's ``max_epochs`` with no minibatching).
    lr
        Adam learning rate.
    seed
        Seed of the guide's noise: the same seed, input and device give the same numbers (bitwise on a CPU; see the
        module's note on reproducibility for GPUs).
    cuda_graph
        On a GPU, capture one training step as a CUDA graph and replay it (falls back to plain steps if capture
        fails). Ignored on CPU.
    compile_objective
        Compile the objective (forward and backward) with ``torch.compile``: fuses its many small operations into a
        few kernels. ``None``: on a GPU only (on CPU it was measured slower for full-size data). A compiled objective
        that fails or disagrees with the plain one on a first evaluation is not used.
    progress
        Show progress (:class:`tissuemap.progress.Progress`: a bar on a terminal, plain log lines otherwise).
    checkpoint
        :class:`~tissuemap.checkpoint.Checkpointing`: save the fit's state every ``checkpoint.every`` steps and, with
        ``checkpoint.resume``, continue from a saved one. A resumed fit gives the numbers of an uninterrupted one
        (bitwise on a CPU).
    threads
        torch's CPU threads, applied right before the training loop (:func:`tissuemap.threads.use_threads`);
        ``None`` leaves torch's setting as it is.
    stop
        :class:`~tissuemap.interruption.StopRequest`, asked after every step: once a signal has set it, the state is
        saved to ``checkpoint`` and :class:`~tissuemap.interruption.TrainingInterrupted` raised.
    early_stopping
        :class:`~tissuemap.early_stopping.EarlyStopping`: asked every
        :data:`~tissuemap.early_stopping.EARLY_STOPPING_EVERY` steps whether the loss has levelled off; training ends
        there if so. ``None``: all steps.

    Raises
    ------
    InputError
        If the options are out of range, the ELBO becomes NaN (what to check is in the message), or the checkpoint
        to resume from was written for other inputs or settings.
    """
    import torch

    from tissuemap.early_stopping import EARLY_STOPPING_EVERY
    from tissuemap.interruption import stop_training
    from tissuemap.models.cell2location import MappingObjective, initial_guide_parameters
    from tissuemap.progress import Progress

    check_training_options(max_epochs, lr)
    started = time.perf_counter()
    data = setup.data
    device = data.counts.device
    objective = MappingObjective(data, setup.priors)
    parameters = initial_guide_parameters(data, setup.priors).requires_grad_()
    # capturable: the step count stays on the GPU, so that a replayed CUDA graph advances the bias corrections
    optimizer = torch.optim.Adam([parameters], lr=lr, capturable=device.type == "cuda")
    generator = torch.Generator(device=device).manual_seed(seed)
    eps = torch.empty(parameters.shape[1], dtype=parameters.dtype, device=device)
    losses = torch.empty(max_epochs, dtype=parameters.dtype, device=device)
    negative_elbo, compiled = objective.negative_elbo, False
    if compile_objective if compile_objective is not None else device.type == "cuda":
        negative_elbo, compiled = _checked_compile(negative_elbo, parameters)
    checkpoint_key = _checkpoint_key(setup, max_epochs, lr, seed) if checkpoint is not None else None
    saved = checkpoint.load(checkpoint_key) if checkpoint is not None else None
    first_step = _restore(saved, parameters, optimizer, generator, losses) if saved is not None else 0

    def train_step():
        loss = negative_elbo(parameters, eps)
        (parameters.grad,) = torch.autograd.grad(loss, [parameters])
        optimizer.step()
        return loss.detach()

    use_graph = cuda_graph and device.type == "cuda"
    step_fn, steps_done = train_step, first_step
    if use_graph:
        step_fn, steps_done = _capture_cuda_graph(train_step, eps, generator, losses, first_step, max_epochs)
        use_graph = step_fn is not train_step
    setup_seconds = time.perf_counter() - started

    if threads is not None:
        from tissuemap.threads import use_threads

        use_threads(threads)  # again: a library may have changed it since the step started
    training_threads = torch.get_num_threads()
    started = time.perf_counter()
    checked = steps_done  # losses before this step are known to be finite
    steps_run, stopped_at = max_epochs, None
    with Progress(max_epochs, "mapping", "step", enabled=progress, initial=steps_done) as bar:
        for step in range(steps_done, max_epochs):
            eps.normal_(generator=generator)
            losses[step] = step_fn()
            if bar.due() or step + 1 == max_epochs:
                if not bool(torch.isfinite(losses[checked: step + 1]).all()):
                    first_bad = int(torch.nonzero(~torch.isfinite(losses[: step + 1]))[0]) + 1
                    raise InputError(_nan_message(first_bad))
                checked = step + 1
                bar.update(step + 1, f"loss {float(losses[step]) + objective.log_factorial_total:.4g}")
            # at fixed steps, not when the progress is due: the same seed must stop at the same step
            if early_stopping is not None and (step + 1) % EARLY_STOPPING_EVERY == 0 and step + 1 < max_epochs \
                    and _levelled_off(early_stopping, losses, step + 1, objective.log_factorial_total):
                steps_run = stopped_at = step + 1
                break
            if checkpoint is not None and checkpoint.due(step + 1, max_epochs):
                checkpoint.save(_training_state(step + 1, parameters, optimizer, generator, losses), checkpoint_key)
            if stop is not None and stop.signal_name is not None:
                stop_training(stop, checkpoint,
                              lambda: _training_state(step + 1, parameters, optimizer, generator, losses),
                              checkpoint_key, step + 1, max_epochs, "steps")
    if stopped_at is not None:
        logger.info("early stopping at step %d of %d: the mean -ELBO of the last %d steps improved by less than %g "
                    "(relative) on the %d before", stopped_at, max_epochs, early_stopping.window,
                    early_stopping.tolerance, early_stopping.window)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    training_seconds = time.perf_counter() - started
    loss = losses[:steps_run].double().cpu().numpy() + objective.log_factorial_total
    fit = MappingFit(
        guide_parameters=parameters.detach(), loss=loss, device=_device_name(device), steps=steps_run, lr=lr,
        seed=seed, cuda_graph=use_graph, compiled=compiled, timed_steps=steps_run - steps_done,
        threads=training_threads,
        seconds={"model_setup": setup_seconds, "training": training_seconds},
        early_stopping=early_stopping.record(stopped_at, max_epochs) if early_stopping is not None else None,
    )
    logger.info("trained %d steps in %.1f s (%.1f it/s) on %s (compiled: %s, CUDA graph: %s); final -ELBO %.6g",
                steps_run, setup_seconds + training_seconds, fit.iterations_per_second, fit.device, compiled,
                use_graph, loss[-1])
    fit.convergence = judge_convergence(loss, "--max-epochs", "--mapping-epochs")
    log_convergence(fit.convergence, "mapping")
    return fit


def _levelled_off(rule, losses, steps: int, log_factorial_total: float) -> bool:
    """Ask the early-stopping rule about the losses so far (only the two windows it compares leave the device)."""
    recent = losses[max(0, steps - 2 * rule.window): steps].double().cpu().numpy() + log_factorial_total
    return rule.should_stop(recent)


def _checkpoint_key(setup: MappingSetup, max_epochs: int, lr: float, seed: int) -> str:
    """Fingerprint of everything a fit's numbers depend on: the model's data, priors, options and device type."""
    from tissuemap.checkpoint import fingerprint

    data = setup.data
    # the optimiser names the state's layout: a checkpoint of an earlier optimiser does not match
    settings = {"model": "mapping", "optimizer": "torch.optim.Adam", "max_epochs": max_epochs, "lr": lr,
                "seed": seed, "device": data.counts.device.type, "priors": asdict(setup.priors)}
    arrays = [data.counts, data.batch_index, data.signatures, data.n_cells_per_location, data.detection_alpha,
              data.detection_mean]
    return fingerprint(settings, [tensor.cpu().numpy() for tensor in arrays])


def _training_state(step: int, parameters, optimizer, generator, losses) -> dict:
    """What the rest of a fit depends on after ``step`` steps (saved at once: on a CPU these are live tensors)."""
    return {
        "step": step,
        "parameters": parameters.detach().cpu(),
        "optimizer": optimizer.state_dict(),
        "generator": generator.get_state(),
        "losses": losses[:step].cpu(),
    }


def _restore(state: dict, parameters, optimizer, generator, losses) -> int:
    """Put a saved training state back in place (in-place copies: a CUDA graph captured later sees the same
    tensors); returns the step to continue from."""
    import torch

    with torch.no_grad():
        parameters.copy_(state["parameters"])
    optimizer.load_state_dict(state["optimizer"])  # its tensors go to the parameters' device
    generator.set_state(state["generator"])
    step = int(state["step"])
    losses[:step] = state["losses"].to(losses.device)
    return step


# relative difference between compiled and plain objective (loss and gradient) above which the compiled one is dropped
COMPILE_TOLERANCE = 1e-3


def _checked_compile(negative_elbo, parameters):
    """``(torch.compile(negative_elbo), True)`` if it runs and agrees with ``negative_elbo`` at the guide's median
    (noise 0); else ``(negative_elbo, False)``, with a warning saying why."""
    import torch

    eps = torch.zeros(parameters.shape[1], dtype=parameters.dtype, device=parameters.device)
    compiled = torch.compile(negative_elbo)
    try:
        values = []
        for function in (negative_elbo, compiled):
            loss = function(parameters, eps)
            values.append((loss.detach(), torch.autograd.grad(loss, [parameters])[0]))
    except Exception as err:  # noqa: BLE001  (any compiler failure: train with the plain objective)
        logger.warning("torch.compile of the objective failed (%s); training without it",
                       f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
        return negative_elbo, False
    (loss, grad), (compiled_loss, compiled_grad) = values
    loss_error = float((compiled_loss - loss).abs() / loss.abs().clamp(min=1))
    grad_error = float((compiled_grad - grad).abs().max() / grad.abs().max().clamp(min=1e-12))
    if not (loss_error < COMPILE_TOLERANCE and grad_error < COMPILE_TOLERANCE):
        logger.warning("the compiled objective differs from the plain one (loss %.2g, gradient %.2g relative); "
                       "training without it", loss_error, grad_error)
        return negative_elbo, False
    return compiled, True


# steps run eagerly before capture: they allocate what the graph will reuse and compile what must be compiled
WARMUP_STEPS = 3


def _capture_cuda_graph(train_step, eps, generator, losses, first_step, max_epochs):
    """Capture ``train_step`` as a CUDA graph after a few eager warm-up steps from ``first_step`` (their losses
    are recorded).

    Returns the function to call per step (replaying the graph into a static loss) and the number of steps already
    done; on any capture failure, logs why and returns ``train_step`` itself.
    """
    import torch

    warmed_up = min(first_step + WARMUP_STEPS, max_epochs)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for step in range(first_step, warmed_up):
            eps.normal_(generator=generator)
            losses[step] = train_step()
    torch.cuda.current_stream().wait_stream(stream)
    if warmed_up == max_epochs:
        return train_step, warmed_up
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            static_loss = train_step()
    except RuntimeError as err:  # an op that cannot be captured: train without the graph
        logger.warning("CUDA graph capture failed (%s); training without it", str(err).splitlines()[0])
        return train_step, warmed_up

    def replay():
        graph.replay()
        return static_loss

    return replay, warmed_up


def _device_name(device) -> str:
    import torch

    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({counted(torch.get_num_threads(), 'thread')})"


def posterior_summaries(setup: MappingSetup, fit: MappingFit) -> dict[str, dict[str, np.ndarray]]:
    """``means``, ``stds``, ``q05`` and ``q95`` of every site under the trained guide, exact (log-normal), as numpy
    arrays of the sites' shapes: ``summaries[k][site]``."""
    from tissuemap.models.cell2location import SiteLayout, guide_scale
    from tissuemap.models.posterior import lognormal_summaries

    layout = SiteLayout.for_data(setup.data, setup.priors)
    loc, raw_scale = fit.guide_parameters.double()
    flat = lognormal_summaries(loc, guide_scale(raw_scale))
    return {k: {site: value.cpu().numpy() for site, value in layout.split(flat[k]).items()} for k in SUMMARIES}


def _sample_sites(setup: MappingSetup, summary: dict[str, np.ndarray], name: str) -> dict[str, np.ndarray]:
    """One summary of every site restricted to a sample: its locations' rows and its batch's row."""
    rows, batch = setup.rows[name], setup.sample_batch[name]
    return {
        site: values[rows] if site in LOCATION_SITES else values[batch: batch + 1] if site in BATCH_SITES else values
        for site, values in summary.items()
    }


def _scaled_signatures(setup: MappingSetup, means: dict[str, np.ndarray]) -> np.ndarray:
    """(F, G) g_fg · E[m_g]: expected molecules per cell of each type at detection 1."""
    return setup.data.signatures.double().cpu().numpy() * means["m_g"]


def expected_counts(setup: MappingSetup, means: dict[str, np.ndarray], name: str, rows: np.ndarray) -> np.ndarray:
    """Posterior mean of μ_sg for the given rows (positions within sample ``name``): exact under the mean-field guide,
    where the sites are independent and the mean of the product is the product of the means."""
    sample_rows = np.arange(setup.rows[name].start, setup.rows[name].stop)[rows]
    batch = setup.sample_batch[name]
    cell_part = means["w_sf"][sample_rows] @ _scaled_signatures(setup, means)
    return (cell_part + means["s_eg"][batch]) * means["y_s"][sample_rows]


def expected_expression_layers(counts, w_means: np.ndarray, scaled_signatures: np.ndarray, background: np.ndarray,
                               cell_types: list[str]) -> dict[str, sp.csr_matrix]:
    """Split every observed count among the cell types (spec §3): type f gets the share
    ``w_sf g_fg m_g / (Σ_f' w_sf' g_f'g m_g + s_eg)`` of x_sg. Returns one sparse layer per type (zeros stay zero).

    Parameters
    ----------
    counts
        ``(S, G)`` observed counts of one sample (sparse or dense).
    w_means, scaled_signatures, background
        ``(S, F)`` E[w_sf], ``(F, G)`` g_fg E[m_g] and ``(G,)`` E[s_eg] of the sample's batch.
    """
    counts = sp.csr_matrix(counts, dtype=np.float64)
    counts.sort_indices()
    rows = np.repeat(np.arange(counts.shape[0]), np.diff(counts.indptr))
    genes = counts.indices
    # Σ_f w_sf g_fg m_g + s_g at the non-zero entries, a block of spots at a time (bounded memory)
    denominator = np.empty(counts.nnz)
    block = max(1, (1 << 22) // max(1, counts.shape[1]))
    for start in range(0, counts.shape[0], block):
        first, last = counts.indptr[start], counts.indptr[min(start + block, counts.shape[0])]
        dense = w_means[start: start + block] @ scaled_signatures + background
        denominator[first:last] = dense[rows[first:last] - start, genes[first:last]]
    share = counts.data / denominator
    layers = {}
    for f, cell_type in enumerate(cell_types):
        values = (share * w_means[rows, f] * scaled_signatures[f, genes]).astype(np.float32)
        layers[cell_type] = sp.csr_matrix((values, genes.copy(), counts.indptr.copy()), shape=counts.shape)
    return layers


def _settings(setup: MappingSetup, fit: MappingFit, sample: SpatialSample) -> dict:
    """What the fit was run with, for ``uns['mod']`` (h5ad-storable: no None)."""
    return {
        "model_name": "cell2location (tissuemap, Pyro)",
        "n_cells_per_location": sample.n_cells_per_location,
        "cell_counts": sample.cell_counts_path,
        "detection_alpha": sample.detection_alpha,
        "detection_mean": float(setup.data.detection_mean),
        "batch": sample.slide,
        "batch_names": list(setup.batch_names),
        "samples_fitted_together": [s.name for s in setup.samples],
        "genes_matched_by": setup.gene_match.key,
        "max_epochs": fit.steps,
        "lr": fit.lr,
        "seed": fit.seed,
        "device": fit.device,
        "priors": asdict(setup.priors),
    }


def export_mapping(
    setup: MappingSetup,
    fit: MappingFit,
    expected_expression: bool = False,
    summaries: dict | None = None,
) -> dict:
    """Each sample's posterior in an AnnData, named as the cell2location package names it.

    Every returned AnnData is its sample subset to the shared genes (raw counts in ``X``) with:

    - ``obsm['{k}_cell_abundance_w_sf']`` for k in means, stds, q05, q95: spots × cell types, columns
      ``{k}cell_abundance_w_sf_{celltype}``;
    - ``obs['detection_sensitivity']`` (posterior mean of y_s) and ``obs['total_cell_abundance']`` (Σ_f E[w_sf]);
    - ``uns['mod']``: ``factor_names`` (cell types), ``var_names``, ``obs_names``, ``post_sample_{k}`` (every site's
      summary restricted to the sample; ``post_sample_means`` also holds ``u_sf``, the expected mRNA molecules of each
      type per spot) and the settings of the fit;
    - with ``expected_expression``, one sparse layer per cell type: the counts split among types (spec §3).

    Returns
    -------
    Sample name -> AnnData.
    """
    summaries = summaries if summaries is not None else posterior_summaries(setup, fit)
    results = {}
    for sample in setup.samples:
        adata = sample.adata[:, setup.genes].copy()
        sites = {k: _sample_sites(setup, summaries[k], sample.name) for k in SUMMARIES}
        for k in SUMMARIES:
            columns = [f"{k}cell_abundance_w_sf_{cell_type}" for cell_type in setup.cell_types]
            adata.obsm[f"{k}_cell_abundance_w_sf"] = pd.DataFrame(sites[k]["w_sf"], adata.obs_names, columns)
        means = sites["means"]
        scaled = _scaled_signatures(setup, summaries["means"])
        means["u_sf"] = means["w_sf"] * scaled.sum(axis=1)
        adata.obs["detection_sensitivity"] = means["y_s"][:, 0]
        adata.obs["total_cell_abundance"] = means["w_sf"].sum(axis=1)
        adata.obs["n_cells_prior"] = sample.spot_cells_prior()  # N̂ of every spot: the prior mean of its cells
        adata.uns["mod"] = {
            "factor_names": list(setup.cell_types),
            "var_names": list(setup.genes),
            "obs_names": list(adata.obs_names),
            **{f"post_sample_{k}": sites[k] for k in SUMMARIES},
            **_settings(setup, fit, sample),
        }
        if expected_expression:
            layers = expected_expression_layers(adata.X, means["w_sf"], scaled, means["s_eg"][0], setup.cell_types)
            for cell_type, layer in layers.items():
                adata.layers[cell_type] = layer
        results[sample.name] = adata
    return results


@dataclass
class MappingResult:
    """Everything ``tissuemap map`` writes: the fit, its set-up, and each sample's exported AnnData."""

    setup: MappingSetup
    fit: MappingFit
    summaries: dict
    samples: dict  # sample name -> AnnData
    checkpoint: object = None  # the fit's Checkpointing, if any: deleted once the outputs are written


def map_samples(
    spatial_paths: list[str | os.PathLike],
    signatures_path: str | os.PathLike,
    n_cells_per_location: float | None = MAPPING_N_CELLS_PER_LOCATION,
    detection_alpha: float = MAPPING_DETECTION_ALPHA,
    plan: dict[str, dict] | None = None,
    max_epochs: int = MAPPING_MAX_EPOCHS,
    lr: float = MAPPING_LR,
    device: str = "auto",
    seed: int = MAPPING_SEED,
    expected_expression: bool = False,
    min_shared_genes: int = MAPPING_MIN_SHARED_GENES,
    progress: bool = True,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int = 0,
    resume: bool = False,
    threads: int | None = None,
    early_stopping=None,
    cell_counts: dict[str, str | os.PathLike] | None = None,
) -> MappingResult:
    """Map cell types onto one or several QC'd samples, fitted jointly (one batch per slide).

    Reads the inputs (:func:`read_spatial_sample`, :func:`read_signatures`), sets up the data
    (:func:`setup_mapping`), trains (:func:`fit_mapping`) and exports (:func:`export_mapping`); each sample's row of
    the mapping ``plan`` (or its ``uns['tissuemap']`` values) overrides ``n_cells_per_location`` and
    ``detection_alpha``. With a plan, the samples are fitted in its order, whatever order they are given in.

    With ``checkpoint_dir``, training saves its state every ``checkpoint_every`` steps to
    ``checkpoint_dir/.NAME.map.ckpt.pt`` (NAME: the sample names joined by ``+``) and, with ``resume``, continues
    from it (:func:`fit_mapping`); :func:`write_mapping_outputs` deletes it.

    ``threads``: torch's CPU threads (and those of the libraries that start later), set now and again right before
    training; ``None`` leaves them as they are. ``early_stopping``: an
    :class:`~tissuemap.early_stopping.EarlyStopping` rule, or ``None`` for all ``max_epochs`` steps.

    ``cell_counts``: sample name -> its cell counts file (:mod:`tissuemap.cell_counts`), whose counts replace N̂ for
    the spots they list; the key ``""`` stands for the only sample mapped.

    Raises
    ------
    InputError
        On any input problem or out-of-range option, before training starts; or if training diverges.
    """
    from tissuemap.interruption import stop_on_signals
    from tissuemap.models.device import resolve_device

    started = time.perf_counter()
    if n_cells_per_location is not None:
        _positive(n_cells_per_location, "the number of cells per location", "--n-cells-per-location")
    _positive(detection_alpha, "detection alpha", "--detection-alpha")
    check_training_options(max_epochs, lr)
    if threads is not None:
        from tissuemap.threads import use_threads

        use_threads(threads)
    torch_device = resolve_device(device)
    samples = [read_spatial_sample(path, n_cells_per_location, detection_alpha, plan) for path in spatial_paths]
    if plan is not None:
        samples.sort(key=lambda sample: plan[sample.name]["order"])
    if cell_counts:
        attach_cell_counts(samples, cell_counts)
    signatures = read_signatures(signatures_path)
    read_seconds = time.perf_counter() - started
    setup = setup_mapping(samples, signatures, min_shared_genes, torch_device, signatures_name=str(signatures_path))
    checkpoint = None
    if checkpoint_dir is not None:
        from tissuemap.checkpoint import Checkpointing

        name = "+".join(sample.name for sample in setup.samples)
        checkpoint = Checkpointing(Path(checkpoint_dir) / f".{name}.map.ckpt.pt", checkpoint_every, resume)
    with stop_on_signals() as stop:
        fit = fit_mapping(setup, max_epochs, lr, seed, progress=progress, checkpoint=checkpoint, threads=threads,
                          stop=stop, early_stopping=early_stopping)
    started = time.perf_counter()
    summaries = posterior_summaries(setup, fit)
    exported = export_mapping(setup, fit, expected_expression, summaries)
    export_seconds = time.perf_counter() - started
    fit.seconds = {"read": read_seconds, "data_setup": setup.seconds, **fit.seconds, "export": export_seconds}
    return MappingResult(setup, fit, summaries, exported, checkpoint)


def attach_cell_counts(samples: list[SpatialSample], files: dict[str, str | os.PathLike]) -> None:
    """Read each sample's cell counts file and set its spots' N̂ (:mod:`tissuemap.cell_counts`); the key ``""``
    is the only sample. Raises :class:`InputError` for a file of no sample mapped here or a bad file."""
    from tissuemap.cell_counts import read_cell_counts, spot_cells_prior

    by_name = {sample.name: sample for sample in samples}
    for name, path in files.items():
        if name == "" and len(samples) > 1:
            raise InputError(f"--cell-counts {path}: {len(samples)} samples are mapped; give SAMPLE={path}")
        sample = samples[0] if name == "" else by_name.get(name)
        if sample is None:
            raise InputError(f"--cell-counts {name}={path}: no sample {name!r} is mapped here (samples: "
                             f"{', '.join(by_name)}); name one of them")
        counts = read_cell_counts(path)
        sample.cell_counts = spot_cells_prior(counts, sample.adata.obs_names, sample.n_cells_per_location, str(path),
                                              sample.name)
        sample.cell_counts_path = str(path)


# rows drawn for the observed-vs-expected figure: about this many entries in all
QC_PLOT_ENTRIES = 2_000_000


def history_record(result: MappingResult, name: str) -> dict:
    """The training history written to ``NAME.mapping_history.json``: settings, timings, the loss per step, and
    whether it levelled off (``converged``, ``convergence``: :func:`tissuemap.convergence.judge_convergence`)."""
    fit, setup = result.fit, result.setup
    return {
        "sample": name,
        "samples_fitted_together": [sample.name for sample in setup.samples],
        "batch": setup.batch_names[setup.sample_batch[name]],
        "device": fit.device,
        "threads": fit.threads,
        "cuda_graph": fit.cuda_graph,
        "compiled": fit.compiled,
        "steps": fit.steps,
        "lr": fit.lr,
        "seed": fit.seed,
        "iterations_per_second": fit.iterations_per_second,
        "timed_steps": fit.timed_steps,
        "seconds": fit.seconds,
        "n_spots": int(setup.data.n_locations),
        "n_genes": int(setup.data.n_genes),
        "n_cell_types": int(setup.data.n_types),
        "converged": fit.convergence.get("converged"),
        "convergence": fit.convergence,
        "loss_definition": "negative ELBO of the whole fit (all samples fitted together), log(x!) included",
        "loss_every": 1,
        "early_stopping": fit.early_stopping,
        "loss": [float(value) for value in fit.loss],
    }


def write_mapping_outputs(result: MappingResult, outdir: str | os.PathLike, spatialdata: bool = False) -> None:
    """Write, per sample into its own folder ``OUTDIR/NAME/`` (the layout of a run's results), via a staging folder
    (all files of all samples or none):

    ``NAME.abundance.h5ad`` (:func:`export_mapping`), ``NAME.cell_abundance_q05.csv`` and
    ``NAME.cell_abundance_mean.csv`` (barcodes × cell types), ``NAME.mapping_history.json`` (:func:`history_record`),
    with ``spatialdata`` the SpatialData store ``NAME.zarr`` (:mod:`tissuemap.io.spatialdata_export`), and the QC
    figures ``NAME.mapping_elbo.png``, ``NAME.mapping_observed_vs_expected.png``,
    ``NAME.mapping_cells_vs_counts.png`` and ``NAME.cell_abundance_spatial.png``; then deletes the fit's checkpoint.
    """
    from tissuemap.outputs import staged_outputs
    from tissuemap.plotting.mapping import plot_cell_abundance_spatial, plot_cells_vs_counts
    from tissuemap.plotting.training import plot_elbo_history, plot_observed_vs_expected

    started = time.perf_counter()
    setup, fit = result.setup, result.fit
    means = result.summaries["means"]
    with staged_outputs(outdir) as staged:
        for name, adata in result.samples.items():
            staging = staged / name
            staging.mkdir()
            adata.write_h5ad(staging / f"{name}.abundance.h5ad", compression="gzip")
            if spatialdata:
                from tissuemap.io.spatialdata_export import write_spatialdata

                write_spatialdata(adata, name, staging / f"{name}.zarr")
            for k, label in (("q05", "q05"), ("means", "mean")):
                table = adata.obsm[f"{k}_cell_abundance_w_sf"].copy()
                table.columns = setup.cell_types
                table.index.name = "barcode"
                table.to_csv(staging / f"{name}.cell_abundance_{label}.csv")

            together = "" if len(setup.samples) == 1 else f" (fitted with {len(setup.samples) - 1} other samples)"
            plot_elbo_history({"-ELBO": fit.loss}, staging / f"{name}.mapping_elbo.png",
                              f"{name}: cell2location training{together}", xlabel="step")
            n_rows = min(adata.n_obs, max(1, QC_PLOT_ENTRIES // adata.n_vars))
            rows = np.linspace(0, adata.n_obs - 1, n_rows).round().astype(int)
            plot_observed_vs_expected(adata.X[rows], expected_counts(setup, means, name, rows),
                                      staging / f"{name}.mapping_observed_vs_expected.png",
                                      f"{name}: observed vs expected counts")
            plot_cells_vs_counts(adata, staging / f"{name}.mapping_cells_vs_counts.png", name)
            plot_cell_abundance_spatial(adata, staging / f"{name}.cell_abundance_spatial.png", name)
        fit.seconds["write"] = time.perf_counter() - started
        for name in result.samples:
            history = json.dumps(history_record(result, name), indent=1)
            (staged / name / f"{name}.mapping_history.json").write_text(history + "\n")
    if result.checkpoint is not None:
        result.checkpoint.discard()
    logger.info("wrote the mapping of %s to %s", ", ".join(result.samples), outdir)
