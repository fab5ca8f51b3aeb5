"""``tissuemap map``: map cell types onto QC'd Visium samples with the cell2location model (CPU or GPU)."""

from __future__ import annotations

from pathlib import Path

import click

from tissuemap.cli.options import checkpoint_options
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
@click.option("--n-cells-per-location", required=True, type=POSITIVE,
              help="Expected cells per spot (tissue dependent; the cell2location tutorial uses 30 for lymph node). "
              "A sample's value in its qc file (from the samplesheet) takes precedence.")
@click.option("--detection-alpha", default=20.0, show_default=True, type=POSITIVE,
              help="Regularisation of within-slide detection variation (20; 200 when detection is uniform). "
              "A sample's value in its qc file takes precedence.")
@click.option("--max-epochs", default=30000, show_default=True, type=click.IntRange(min=1),
              help="Training steps, each on all the data.")
@click.option("--lr", default=0.002, show_default=True, type=POSITIVE, help="Adam learning rate.")
@click.option("--device", default="auto", show_default=True, type=click.Choice(DEVICE_CHOICES),
              help="Where to train: auto takes a CUDA GPU when there is one.")
@click.option("--seed", default=0, show_default=True, type=int,
              help="Random seed: same seed, input and device give the same numbers.")
@click.option("--expected-expression", is_flag=True,
              help="Also store each cell type's share of every count as one sparse layer per type in "
              "NAME.abundance.h5ad.")
@click.option("--min-shared-genes", default=1000, show_default=True, type=click.IntRange(min=1),
              help="Fewest genes the samples and the signatures must share.")
@checkpoint_options(1000, "steps", ".NAME.map.ckpt.pt")
@click.option("--outdir", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output folder.")
def map_command(
    spatial: tuple[Path, ...],
    more_spatial: tuple[Path, ...],
    signatures_path: Path,
    n_cells_per_location: float,
    detection_alpha: float,
    max_epochs: int,
    lr: float,
    device: str,
    seed: int,
    expected_expression: bool,
    min_shared_genes: int,
    checkpoint_every: int,
    checkpoint_dir: Path | None,
    resume: bool,
    outdir: Path,
) -> None:
    """Estimate how many cells of each reference type are in every spot (cell2location model, Pyro).

    Writes per sample NAME.abundance.h5ad (obsm['q05_cell_abundance_w_sf'] etc., uns['mod']),
    NAME.cell_abundance_q05.csv, NAME.cell_abundance_mean.csv, NAME.mapping_history.json and QC figures.
    """
    from tissuemap.mapping import map_samples, write_mapping_outputs
    from tissuemap.outputs import prepare_outdir

    prepare_outdir(outdir)  # an unwritable folder is an error now, not after hours of training
    result = map_samples(
        [*spatial, *more_spatial], signatures_path, n_cells_per_location=n_cells_per_location,
        detection_alpha=detection_alpha, max_epochs=max_epochs, lr=lr, device=device, seed=seed,
        expected_expression=expected_expression, min_shared_genes=min_shared_genes,
        checkpoint_dir=checkpoint_dir or outdir, checkpoint_every=checkpoint_every, resume=resume,
    )
    write_mapping_outputs(result, outdir)
