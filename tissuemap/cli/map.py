"""``tissuemap map``: map cell types onto QC'd Visium samples with the cell2location model (CPU or GPU)."""

from __future__ import annotations

from pathlib import Path

import click

from tissuemap.cli.options import BATCH_SIZE, checkpoint_options, early_stopping_options, threads_option
from tissuemap.defaults import (
    MAPPING_CHECKPOINT_EVERY,
    MAPPING_DETECTION_ALPHA,
    MAPPING_LR,
    MAPPING_MAX_EPOCHS,
    MAPPING_MIN_SHARED_GENES,
    MAPPING_SEED,
    TRAINING_DEVICE,
)
from tissuemap.models.device import DEVICE_CHOICES

POSITIVE = click.FloatRange(min=0, min_open=True)
EXISTING_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


@click.command("map")
@click.option("--spatial", "spatial", required=True, multiple=True, type=EXISTING_FILE,
              help="NAME.qc.h5ad from tissuemap qc. Several samples (--spatial A B, or --spatial A --spatial B) are "
              "fitted jointly, one batch per slide.")
@click.argument("more_spatial", nargs=-1, type=EXISTING_FILE, metavar="")
@click.option("--signatures", "signatures_path", required=True, type=EXISTING_FILE,
              help="Reference signatures: CSV, genes as rows (first column: gene names), one column per cell type.")
@click.option("--plan", "plan_path", type=EXISTING_FILE, default=None,
              help="mapping_plan.csv from tissuemap plan: each sample's cells per spot, detection alpha and slide, "
              "and the order samples are fitted in. Takes precedence over the two options below.")
@click.option("--n-cells-per-location", type=POSITIVE, default=None,
              help="Expected cells per spot (tissue dependent; the cell2location tutorial uses 30 for lymph node); "
              "needed unless --plan or the qc file (tissuemap qc --n-cells-per-location) gives every sample's.")
@click.option("--cell-counts", "cell_counts", multiple=True, metavar="SAMPLE=FILE",
              help="Cells per spot counted on the image: a CSV with the columns barcode,n_cells whose counts replace "
              "N_cells_per_location for the spots it lists (0 counts as 0.5; spots not listed keep the sample's). "
              "SAMPLE=FILE, once per sample; FILE alone when one sample is mapped.")
@click.option("--detection-alpha", default=MAPPING_DETECTION_ALPHA, show_default=True, type=POSITIVE,
              help="Regularisation of within-slide detection variation (200 suits uniform detection). "
              "A sample's value in --plan or its qc file takes precedence.")
@click.option("--max-epochs", default=MAPPING_MAX_EPOCHS, show_default=True, type=click.IntRange(min=1),
              help="Training steps, each on all the data (at most, with --early-stopping); with --batch-size, epochs "
              "(passes over the data).")
@click.option("--batch-size", type=BATCH_SIZE, default=None,
              help="Spots per training step: minibatch training (stochastic variational inference) of the same joint "
              "model, every spot once per epoch in a random order, for data too large for a full-data fit; auto: "
              "full data if the memory plan says it fits, else the largest batch that fits. Default: every step on "
              "all the data, as the cell2location package.")
@early_stopping_options
@click.option("--lr", default=MAPPING_LR, show_default=True, type=POSITIVE, help="Adam learning rate.")
@click.option("--device", default=TRAINING_DEVICE, show_default=True, type=click.Choice(DEVICE_CHOICES),
              help="Where to train: auto takes a CUDA GPU when there is one.")
@click.option("--seed", default=MAPPING_SEED, show_default=True, type=int,
              help="Random seed: same seed, input and device give the same numbers.")
@click.option("--expected-expression", is_flag=True,
              help="Also store each cell type's share of every count as one sparse layer per type in "
              "NAME.abundance.h5ad.")
@click.option("--min-shared-genes", default=MAPPING_MIN_SHARED_GENES, show_default=True, type=click.IntRange(min=1),
              help="Fewest genes the samples and the signatures must share.")
@click.option("--spatialdata", is_flag=True, default=False,
              help="Also write NAME/NAME.zarr, a SpatialData store: the abundance table, the H&E images and the spots "
              "as circles, in full-resolution pixels (needs pip install 'tissuemap[spatialdata]').")
@threads_option
@checkpoint_options(MAPPING_CHECKPOINT_EVERY, "steps (epochs with --batch-size)", ".NAME.map.ckpt.pt")
@click.option("--outdir", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output folder.")
def map_command(
    spatial: tuple[Path, ...],
    more_spatial: tuple[Path, ...],
    signatures_path: Path,
    plan_path: Path | None,
    n_cells_per_location: float | None,
    cell_counts: tuple[str, ...],
    detection_alpha: float,
    max_epochs: int,
    batch_size: int | str | None,
    early_stopping: bool,
    early_stopping_tolerance: float,
    early_stopping_window: int,
    lr: float,
    device: str,
    seed: int,
    expected_expression: bool,
    min_shared_genes: int,
    spatialdata: bool,
    threads: int | None,
    checkpoint_every: int,
    checkpoint_dir: Path | None,
    resume: bool,
    outdir: Path,
) -> None:
    """Estimate how many cells of each reference type are in every spot (cell2location model, Pyro).

    Writes per sample, into OUTDIR/NAME/: NAME.abundance.h5ad (obsm['q05_cell_abundance_w_sf'] etc., uns['mod']),
    NAME.cell_abundance_q05.csv, NAME.cell_abundance_mean.csv, NAME.mapping_history.json and QC figures (and
    NAME.zarr with --spatialdata).
    """
    from tissuemap.cell_counts import parse_cell_counts_options
    from tissuemap.early_stopping import EarlyStopping
    from tissuemap.mapping import map_samples, write_mapping_outputs
    from tissuemap.outputs import prepare_outdir
    from tissuemap.plan import read_plan
    from tissuemap.threads import resolve_threads

    cell_counts_files = parse_cell_counts_options(cell_counts)
    if spatialdata:
        from tissuemap.io.spatialdata_export import require_spatialdata

        require_spatialdata()
    prepare_outdir(outdir)  # an unwritable folder is an error now, not after hours of training
    result = map_samples(
        [*spatial, *more_spatial], signatures_path, n_cells_per_location=n_cells_per_location,
        detection_alpha=detection_alpha, plan=read_plan(plan_path) if plan_path else None, max_epochs=max_epochs,
        lr=lr, device=device, seed=seed, expected_expression=expected_expression, min_shared_genes=min_shared_genes,
        checkpoint_dir=checkpoint_dir or outdir, checkpoint_every=checkpoint_every, resume=resume, threads=resolve_threads(threads),
        early_stopping=EarlyStopping(early_stopping_tolerance, early_stopping_window) if early_stopping else None,
        cell_counts=cell_counts_files, batch_size=batch_size,
    )
    write_mapping_outputs(result, outdir, spatialdata=spatialdata)
