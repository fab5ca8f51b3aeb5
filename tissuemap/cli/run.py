"""`tissuemap run`: the whole pipeline on one machine."""

from __future__ import annotations

import click


@click.command()
@click.option("--input", "samplesheet", required=True, type=click.Path(dir_okay=False), help="Samplesheet CSV (see README).")
@click.option("--reference", required=True, type=click.Path(dir_okay=False), help="Annotated single-cell reference .h5ad with raw counts.")
@click.option("--labels-key", required=True, help="Column of the reference's obs holding the cell types.")
@click.option("--min-counts", type=click.IntRange(min=0), default=None, help="QC: drop spots with fewer UMIs [default: the qc step's].")
@click.option("--outdir", required=True, type=click.Path(file_okay=False), help="Results folder.")
def run(samplesheet: str, reference: str, labels_key: str, min_counts: int | None, outdir: str) -> None:
    """Run every step on one machine: gene filtering of the reference, then QC of every sample.

    Writes results/reference/ and results/NAME/ (one folder per sample) and results/pipeline_info/ with the
    parameters, package versions and time per step. Each step is the same command the Nextflow pipeline runs.
    """
    from tissuemap.runner import plan_steps, run_steps

    steps = plan_steps(samplesheet, reference, labels_key, outdir, min_counts=min_counts)
    parameters = {"input": samplesheet, "reference": reference, "labels_key": labels_key, "min_counts": min_counts, "outdir": outdir}
    run_steps(steps, outdir, parameters)
