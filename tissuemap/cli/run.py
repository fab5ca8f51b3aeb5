"""`tissuemap run`: the whole pipeline on one machine."""

from __future__ import annotations

import click

FILE = click.Path(dir_okay=False)
POSITIVE = click.FloatRange(min=0, min_open=True)


@click.command()
@click.option("--input", "samplesheet", required=True, type=FILE, help="Samplesheet CSV (see README).")
@click.option("--reference", type=FILE, default=None,
              help="Annotated single-cell reference .h5ad with raw counts, to learn the signatures from.")
@click.option("--labels-key", default=None, help="Column of the reference's obs holding the cell types.")
@click.option("--batch-key", default=None, help="Column of the reference's obs holding each cell's batch.")
@click.option("--covariate-keys", default=None, help="Comma-separated obs columns with technical effects.")
@click.option("--signatures", type=FILE, default=None,
              help="signatures.csv (genes x cell types) of an earlier run, instead of --reference.")
@click.option("--min-counts", type=click.IntRange(min=0), default=None,
              help="QC: drop spots with fewer UMIs  [default: the qc step's]")
@click.option("--n-cells-per-location", type=POSITIVE, default=None,
              help="Expected cells per spot (tissue dependent; the cell2location tutorial uses 30 for lymph node), for "
                   "samples without their own value in the samplesheet (needed when some sample has none).")
@click.option("--detection-alpha", type=POSITIVE, default=None,
              help="Regularisation of within-slide detection variation, for samples without their own value  "
                   "[default: the map step's]")
@click.option("--regression-epochs", type=click.IntRange(min=1), default=None,
              help="Epochs of the signature regression  [default: the signatures step's]")
@click.option("--mapping-epochs", type=click.IntRange(min=1), default=None,
              help="Training steps of the spatial mapping  [default: the map step's]")
@click.option("--mapping-mode", type=click.Choice(["per-sample", "joint", "slide"]), default="per-sample",
              show_default=True,
              help="Fit each sample alone, all samples together, or the samples of each slide (samplesheet column "
                   "'slide') together.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None,
              help="Where to train  [default: auto, a CUDA GPU when there is one]")
@click.option("--seed", type=int, default=None, help="Random seed of the training steps  [default: the steps']")
@click.option("--force", is_flag=True,
              help="Run every step again, even those a previous run finished, and start an interrupted training step "
              "over instead of continuing from its checkpoint.")
@click.option("--outdir", required=True, type=click.Path(file_okay=False), help="Results folder.")
def run(samplesheet: str, outdir: str, force: bool, **options) -> None:
    """Run every step on one machine: QC of every sample, gene filtering and signatures of the reference (or
    --signatures), spatial mapping, a report per sample and a summary.

    Writes results/reference/, results/NAME/ (one folder per sample), results/summary.html and
    results/pipeline_info/ (parameters, package versions, command and time of each step). Each step is the same
    command the Nextflow pipeline runs. A rerun into the same --outdir reuses the steps that finished with the same
    command line and inputs, and continues a training step stopped by SIGTERM or Ctrl-C (exit code 75) from its
    checkpoint. One run at a time may write into a folder.
    """
    from tissuemap.runner import RunOptions, plan_steps, run_steps

    run_options = RunOptions(**options)
    steps = plan_steps(samplesheet, run_options, outdir)
    parameters = {"input": samplesheet, "outdir": outdir, "force": force, **options}
    run_steps(steps, outdir, parameters, force=force)
