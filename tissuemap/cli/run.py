"""`tissuemap run`: the whole pipeline on one machine."""

from __future__ import annotations

import click

from tissuemap import defaults
from tissuemap.cli.options import BATCH_SIZE, early_stopping_options, layer_option, threads_option
from tissuemap.models.device import DEVICE_CHOICES
from tissuemap.plan import DEFAULT_MAPPING_MODE, MAPPING_MODES
from tissuemap.qc import DEFAULT_MIN_COUNTS

FILE = click.Path(dir_okay=False)
POSITIVE = click.FloatRange(min=0, min_open=True)


@click.command()
@click.option("--input", "samplesheet", required=True, type=FILE,
              help="Samplesheet CSV: one row per sample (see README).")
@click.option("--reference", type=FILE, default=None,
              help="Annotated single-cell reference .h5ad with raw counts, to learn the signatures from.")
@click.option("--labels-key", default=None, help="Column of the reference's obs holding the cell types.")
@click.option("--batch-key", default=None, show_default="one batch",
              help="Column of the reference's obs holding each cell's batch.")
@click.option("--covariate-keys", default=None, show_default="none",
              help="Comma-separated obs columns with technical effects.")
@layer_option
@click.option("--signatures", type=FILE, default=None,
              help="signatures.csv (genes x cell types) of an earlier run, instead of --reference.")
@click.option("--min-counts", type=click.IntRange(min=0), default=DEFAULT_MIN_COUNTS, show_default=True,
              help="QC: drop spots with fewer UMIs.")
@click.option("--cell-count-cutoff", type=click.IntRange(min=0), default=defaults.CELL_COUNT_CUTOFF,
              show_default=True,
              help="Gene filter: also keep genes detected in more than this many cells with a mean count above "
                   "--nonz-mean-cutoff.")
@click.option("--cell-percentage-cutoff2", type=click.FloatRange(min=0, max=1),
              default=defaults.CELL_PERCENTAGE_CUTOFF2, show_default=True,
              help="Gene filter: keep genes detected in more than this fraction of all cells.")
@click.option("--nonz-mean-cutoff", type=click.FloatRange(min=0), default=defaults.NONZ_MEAN_CUTOFF,
              show_default=True,
              help="Gene filter: mean count, in the cells where a gene is detected, above which --cell-count-cutoff "
                   "applies.")
@click.option("--method", type=click.Choice(defaults.SIGNATURES_METHODS), default=defaults.SIGNATURES_METHOD,
              show_default=True,
              help="Signatures: nb, negative binomial regression; mean, per-type average counts.")
@click.option("--min-cells-per-type", type=click.IntRange(min=1), default=defaults.SIGNATURES_MIN_CELLS_PER_TYPE,
              show_default=True,
              help="Signatures: cell types with fewer cells are an error.")
@click.option("--regression-epochs", type=click.IntRange(min=1), default=defaults.SIGNATURES_MAX_EPOCHS,
              show_default=True, help="Signatures: epochs of the regression.")
@click.option("--regression-lr", type=POSITIVE, default=defaults.SIGNATURES_LR, show_default=True,
              help="Signatures: Adam learning rate of the regression.")
@click.option("--regression-batch-size", type=click.IntRange(min=1), default=defaults.SIGNATURES_BATCH_SIZE,
              show_default=True, help="Signatures: cells per minibatch of the regression.")
@click.option("--n-cells-per-location", type=POSITIVE, default=None,
              help="Expected cells per spot (tissue dependent; the cell2location tutorial uses 30 for lymph node), for "
                   "samples without their own value in the samplesheet (needed when some sample has none).")
@click.option("--detection-alpha", type=POSITIVE, default=defaults.MAPPING_DETECTION_ALPHA, show_default=True,
              help="Mapping: regularisation of within-slide detection variation, for samples without their own value.")
@click.option("--mapping-epochs", type=click.IntRange(min=1), default=defaults.MAPPING_MAX_EPOCHS, show_default=True,
              help="Mapping: training steps (at most, with --early-stopping); with --batch-size, epochs (passes over "
              "the data).")
@click.option("--batch-size", type=BATCH_SIZE, default=None,
              help="Mapping: spots per training step, minibatch training of the same joint model (tissuemap map "
              "--batch-size; auto: chosen by the memory plan). Default: every step on all the data.")
@early_stopping_options
@click.option("--lr", type=POSITIVE, default=defaults.MAPPING_LR, show_default=True,
              help="Mapping: Adam learning rate.")
@click.option("--min-shared-genes", type=click.IntRange(min=1), default=defaults.MAPPING_MIN_SHARED_GENES,
              show_default=True,
              help="Mapping: fewest genes the samples and the signatures must share.")
@click.option("--spatialdata", is_flag=True, default=False,
              help="Mapping: also write each sample's NAME/NAME.zarr, a SpatialData store (needs pip install "
                   "'tissuemap[spatialdata]').")
@click.option("--mapping-mode", type=click.Choice(MAPPING_MODES), default=DEFAULT_MAPPING_MODE, show_default=True,
              help="Fit each sample alone, all samples together, or the samples of each slide (samplesheet column "
                   "'slide') together.")
@click.option("--device", type=click.Choice(DEVICE_CHOICES), default=defaults.TRAINING_DEVICE, show_default=True,
              help="Where to train: auto takes a CUDA GPU when there is one.")
@click.option("--seed", type=int, default=defaults.MAPPING_SEED, show_default=True,
              help="Random seed of both training steps.")
@threads_option
@click.option("--force", is_flag=True,
              help="Run every step again, even those a previous run finished, and start an interrupted training step "
              "over instead of continuing from its checkpoint.")
@click.option("--outdir", required=True, type=click.Path(file_okay=False), help="Results folder.")
def run(samplesheet: str, outdir: str, force: bool, **options) -> None:
    """Run every step on one machine: QC of every sample, gene filtering and signatures of the reference (or
    --signatures), spatial mapping, a report per sample and a summary.

    Every input (samples, reference, signatures) is checked before the first step runs. Writes
    results/reference/, results/NAME/ (one folder per sample), results/summary.html and results/pipeline_info/
    (parameters, package versions, command and time of each step). Each step is the same command the Nextflow
    pipeline runs. A rerun into the same --outdir reuses the steps that finished with the same command line and
    inputs, and continues a training step stopped by SIGTERM or Ctrl-C (exit code 75) from its checkpoint. One run
    at a time may write into a folder.
    """
    from tissuemap.cli import main
    from tissuemap.runner import RunOptions, plan_steps, run_steps
    from tissuemap.threads import resolve_threads, use_threads

    options["threads"] = resolve_threads(options["threads"])
    use_threads(options["threads"])  # before any step starts a thread pool (QC's numba, BLAS)
    run_options = RunOptions(**options)
    steps = plan_steps(samplesheet, run_options, outdir, check_files=True)
    parameters = {"input": samplesheet, "outdir": outdir, "force": force, **options}
    run_steps(steps, main, outdir, parameters, force=force)
