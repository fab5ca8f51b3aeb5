"""``tissuemap simulate``: a ground-truth data set (reference, Visium samples in Space Ranger layout, truth)."""

from __future__ import annotations

import click

from tissuemap.simulation.parameters import SimulationParameters

DEFAULTS = SimulationParameters()


@click.command(context_settings={"show_default": True})
@click.option("--outdir", required=True, type=click.Path(file_okay=False), help="Folder to write the data set into.")
@click.option("--seed", default=DEFAULTS.seed, type=int, help="Random seed: the same seed gives the same data.")
@click.option("--n-samples", default=DEFAULTS.n_samples, type=click.IntRange(min=1), help="Visium samples.")
@click.option("--n-spots", default=DEFAULTS.n_spots, type=click.IntRange(min=1), help="Tissue spots per sample.")
@click.option("--n-genes", default=DEFAULTS.n_genes, type=click.IntRange(min=1),
              help="Genes, 13 mitochondrial ones included.")
@click.option("--n-cell-types", default=DEFAULTS.n_cell_types, type=click.IntRange(min=1), help="Cell types.")
@click.option("--n-cells", default=DEFAULTS.n_cells, type=click.IntRange(min=1), help="Cells in the reference.")
@click.option("--n-batches", default=DEFAULTS.n_batches, type=click.IntRange(min=1),
              help="10x reactions in the reference (about a third 5', the rest 3').")
@click.option("--n-zones", default=DEFAULTS.n_zones, type=click.IntRange(min=1), help="Tissue zones per sample.")
@click.option("--confounding", default=DEFAULTS.confounding, type=click.FloatRange(0, 1),
              help="0: every cell type spread evenly over the reactions; 1: each type from two reactions.")
@click.option("--n-cells-per-location", default=DEFAULTS.n_cells_per_location,
              type=click.FloatRange(min=0, min_open=True), help="Mean number of cells per spot.")
@click.option("--detection-alpha", default=DEFAULTS.detection_alpha, type=click.FloatRange(min=0, min_open=True),
              help="Gamma shape of per-spot detection around its sample's mean (larger: more uniform).")
def simulate(outdir: str, **options) -> None:
    """Simulate a single-cell reference and Visium samples whose true cells per spot are known.

    Writes reference.h5ad, samples/NAME/outs/ (Space Ranger layout), samplesheet.csv, simulation.json and truth/
    (true cell abundance per spot, profiles, platform effect...).
    """
    from tissuemap.simulation.dataset import simulate_dataset

    simulate_dataset(SimulationParameters(**options), outdir)
