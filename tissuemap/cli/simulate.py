"""``tissuemap simulate``: a ground-truth data set (reference, Visium samples in Space Ranger layout, truth)."""

from __future__ import annotations

import click

from tissuemap.samplesheet import BIN_SIZES
from tissuemap.simulation.parameters import HD_CELLS_PER_8UM_BIN, SimulationParameters, default_cells_per_location

DEFAULTS = SimulationParameters()


@click.command(context_settings={"show_default": True})
@click.option("--outdir", required=True, type=click.Path(file_okay=False), help="Folder to write the data set into.")
@click.option("--seed", default=DEFAULTS.seed, type=int, help="Random seed: the same seed gives the same data.")
@click.option("--n-samples", default=DEFAULTS.n_samples, type=click.IntRange(min=1), help="Visium samples.")
@click.option("--n-spots", default=DEFAULTS.n_spots, type=click.IntRange(min=1),
              help="Tissue spots per sample (with --visium-hd: tissue bins of --bin-size).")
@click.option("--n-genes", default=DEFAULTS.n_genes, type=click.IntRange(min=1),
              help="Genes, 13 mitochondrial ones included.")
@click.option("--n-cell-types", default=DEFAULTS.n_cell_types, type=click.IntRange(min=1), help="Cell types.")
@click.option("--n-cells", default=DEFAULTS.n_cells, type=click.IntRange(min=1), help="Cells in the reference.")
@click.option("--n-batches", default=DEFAULTS.n_batches, type=click.IntRange(min=1),
              help="10x reactions in the reference (about a third 5', the rest 3').")
@click.option("--n-zones", default=DEFAULTS.n_zones, type=click.IntRange(min=1), help="Tissue zones per sample.")
@click.option("--confounding", default=DEFAULTS.confounding, type=click.FloatRange(0, 1),
              help="0: every cell type spread evenly over the reactions; 1: each type from two reactions.")
@click.option("--n-cells-per-location", default=None, type=click.FloatRange(min=0, min_open=True),
              show_default=f"{DEFAULTS.n_cells_per_location:g} per spot; {HD_CELLS_PER_8UM_BIN:g} per 8 um bin, scaled "
                           "by the bin's area, with --visium-hd",
              help="Mean number of cells per spot (or bin).")
@click.option("--detection-alpha", default=DEFAULTS.detection_alpha, type=click.FloatRange(min=0, min_open=True),
              help="Gamma shape of per-spot detection around its sample's mean (larger: more uniform).")
@click.option("--visium-hd", is_flag=True,
              help="Visium HD-like samples: square bins, low depth, Space Ranger's binned_outputs/ layout "
                   "(parquet positions; the larger bin sizes aggregated from the drawn ones).")
@click.option("--bin-size", default=DEFAULTS.bin_size, type=click.Choice([str(size) for size in BIN_SIZES]),
              help="With --visium-hd: the bins drawn, in micrometres; also the samplesheet's bin_size.")
def simulate(outdir: str, n_cells_per_location: float | None, bin_size: str, **options) -> None:
    """Simulate a single-cell reference and Visium (or Visium HD) samples whose true cells per spot are known.

    Writes reference.h5ad, samples/NAME/outs/ (Space Ranger layout), samplesheet.csv, simulation.json and truth/
    (true cell abundance per spot, profiles, platform effect...). With --visium-hd, counts are drawn in blocks of bins
    straight into sparse form: 500,000 bins fit in a few GiB.
    """
    from tissuemap.simulation.dataset import simulate_dataset

    if n_cells_per_location is None:
        n_cells_per_location = default_cells_per_location(options["visium_hd"], int(bin_size))
    simulate_dataset(SimulationParameters(n_cells_per_location=n_cells_per_location, bin_size=int(bin_size),
                                          **options), outdir)
