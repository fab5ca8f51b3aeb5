"""``tissuemap map`` as one function (:func:`map_samples`: read, set up, train, export) and its files
(:func:`write_mapping_outputs`), with the training history of each sample (:func:`history_record`)."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tissuemap.defaults import (
    MAPPING_DETECTION_ALPHA,
    MAPPING_LR,
    MAPPING_MAX_EPOCHS,
    MAPPING_MIN_SHARED_GENES,
    MAPPING_N_CELLS_PER_LOCATION,
    MAPPING_SEED,
    TRAINING_DEVICE,
)
from tissuemap.log import logger
from tissuemap.mapping.data import (
    attach_cell_counts,
    check_positive,
    check_training_options,
    read_qc_sample,
    read_signatures,
)
from tissuemap.mapping.export import expected_spot_counts, export_mapping, mapping_summaries
from tissuemap.mapping.fit import fit_mapping
from tissuemap.mapping.fit_record import MappingFit
from tissuemap.mapping.memory import plan_mapping_memory
from tissuemap.mapping.setup import MappingSetup, setup_mapping


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
    device: str = TRAINING_DEVICE,
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
    batch_size: int | str | None = None,
) -> MappingResult:
    """Map cell types onto one or several QC'd samples, fitted jointly (one batch per slide).

    Reads the inputs (:func:`read_qc_sample`, :func:`read_signatures`), sets up the data
    (:func:`setup_mapping`), trains (:func:`fit_mapping`) and exports (:func:`export_mapping`); each sample's row of
    the mapping ``plan`` (or its ``uns['tissuemap']`` values) overrides ``n_cells_per_location`` and
    ``detection_alpha``. With a plan, the samples are fitted in its order, whatever order they are given in.

    With ``checkpoint_dir``, training saves its state every ``checkpoint_every`` steps to
    ``checkpoint_dir/.NAME.map.ckpt.pt`` (NAME: the sample names joined by ``+``) and, with ``resume``, continues
    from it (:func:`fit_mapping`); :func:`write_mapping_outputs` deletes it.

    ``threads``: torch's CPU threads (and those of the libraries that start later), set now and again right before
    training; ``None`` leaves them as they are. ``early_stopping``: an
    :class:`~tissuemap.early_stopping.EarlyStopping` rule, or ``None`` for all ``max_epochs`` steps.

    ``batch_size``: spots per step of minibatch training (``max_epochs`` then counts passes over the data; the counts
    stay sparse), ``None``: every step on all the data (:func:`fit_mapping`), ``"auto"``: full data if the memory
    plan (:mod:`tissuemap.mapping.memory`, made before set-up) says it fits, else the largest batch that fits.

    ``cell_counts``: sample name -> its cell counts file (:mod:`tissuemap.cell_counts`), whose counts replace N̂ for
    the spots they list; the key ``""`` stands for the only sample mapped.

    Raises
    ------
    InputError
        On any input problem or out-of-range option, or if the fit would not fit in memory
        (:mod:`tissuemap.mapping.memory`), before training starts; or if training diverges.
    """
    from tissuemap.interruption import stop_on_signals
    from tissuemap.models.device import resolve_device

    started = time.perf_counter()
    if n_cells_per_location is not None:
        check_positive(n_cells_per_location, "the number of cells per location", "--n-cells-per-location")
    check_positive(detection_alpha, "detection alpha", "--detection-alpha")
    check_training_options(max_epochs, lr, batch_size)
    if threads is not None:
        from tissuemap.threads import use_threads

        use_threads(threads)
    torch_device = resolve_device(device)
    samples = [read_qc_sample(path, n_cells_per_location, detection_alpha, plan) for path in spatial_paths]
    if plan is not None:
        samples.sort(key=lambda sample: plan[sample.name]["order"])
    if cell_counts:
        attach_cell_counts(samples, cell_counts)
    signatures = read_signatures(signatures_path)
    read_seconds = time.perf_counter() - started
    batch_size = plan_mapping_memory(samples, signatures, torch_device, batch_size, expected_expression).batch_size
    setup = setup_mapping(samples, signatures, min_shared_genes, torch_device, signatures_name=str(signatures_path),
                          sparse_counts=batch_size is not None)
    checkpoint = None
    if checkpoint_dir is not None:
        from tissuemap.checkpoint import Checkpointing

        name = "+".join(sample.name for sample in setup.samples)
        checkpoint = Checkpointing(Path(checkpoint_dir) / f".{name}.map.ckpt.pt", checkpoint_every, resume)
    with stop_on_signals() as stop:
        fit = fit_mapping(setup, max_epochs, lr, seed, progress=progress, checkpoint=checkpoint, threads=threads,
                          stop=stop, early_stopping=early_stopping, batch_size=batch_size)
    started = time.perf_counter()
    summaries = mapping_summaries(setup, fit)
    exported = export_mapping(setup, fit, expected_expression, summaries)
    export_seconds = time.perf_counter() - started
    fit.seconds = {"read": read_seconds, "data_setup": setup.seconds, **fit.seconds, "export": export_seconds}
    return MappingResult(setup, fit, summaries, exported, checkpoint)


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
        "batch_size": fit.batch_size,
        "loss_every": 1,
        "loss_unit": "step" if fit.batch_size is None else "epoch",
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
                              f"{name}: cell2location training{together}",
                              xlabel="step" if fit.batch_size is None else "epoch")
            n_rows = min(adata.n_obs, max(1, QC_PLOT_ENTRIES // adata.n_vars))
            rows = np.linspace(0, adata.n_obs - 1, n_rows).round().astype(int)
            plot_observed_vs_expected(adata.X[rows], expected_spot_counts(setup, means, name, rows),
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
