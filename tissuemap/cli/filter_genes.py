"""``tissuemap filter-genes``: cell2location's gene filter on the single-cell reference."""

from __future__ import annotations

from pathlib import Path

import click

from tissuemap.cli.options import layer_option
from tissuemap.defaults import CELL_COUNT_CUTOFF, CELL_PERCENTAGE_CUTOFF2, NONZ_MEAN_CUTOFF
from tissuemap.errors import InputError

OUTPUT_PREFIX = "reference"


@click.command("filter-genes")
@click.option("--reference", "reference_path", required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Annotated single-cell reference (.h5ad, cells x genes, raw integer counts).")
@click.option("--labels-key", required=True, help="obs column of the reference holding each cell's type.")
@click.option("--outdir", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output folder.")
@layer_option
@click.option("--cell-count-cutoff", default=CELL_COUNT_CUTOFF, show_default=True, type=click.IntRange(min=0),
              help="Also keep genes detected in more than this many cells with a mean count above --nonz-mean-cutoff.")
@click.option("--cell-percentage-cutoff2", default=CELL_PERCENTAGE_CUTOFF2, show_default=True,
              type=click.FloatRange(min=0, max=1),
              help="Keep genes detected in more than this fraction of all cells.")
@click.option("--nonz-mean-cutoff", default=NONZ_MEAN_CUTOFF, show_default=True, type=click.FloatRange(min=0),
              help="Mean count, in the cells where a gene is detected, above which --cell-count-cutoff applies.")
def filter_genes(
    reference_path: Path,
    labels_key: str,
    outdir: Path,
    layer: str | None,
    cell_count_cutoff: int,
    cell_percentage_cutoff2: float,
    nonz_mean_cutoff: float,
) -> None:
    """Select the reference's informative genes with cell2location's filter.

    A gene is kept when detected in more than --cell-percentage-cutoff2 of all cells, or in more than
    --cell-count-cutoff cells with a mean count above --nonz-mean-cutoff where detected (defaults: the
    cell2location tutorial's). Writes reference.filtered.h5ad, reference.filter_genes.png (diagnostic plot) and
    reference.filter_genes.json (thresholds and numbers) into OUTDIR.
    """
    import json

    from tissuemap.genes import filter_genes as apply_gene_filter
    from tissuemap.log import logger
    from tissuemap.outputs import staged_outputs
    from tissuemap.plotting.genes import plot_gene_filter
    from tissuemap.reference import read_reference

    reference = read_reference(reference_path, labels_key, layer=layer, min_cells_per_type=None)
    filtered = apply_gene_filter(reference, cell_count_cutoff, cell_percentage_cutoff2, nonz_mean_cutoff)
    if filtered.n_vars == 0:
        raise InputError(
            f"{reference_path}: no gene passes the filter; check the counts are raw, or lower --cell-count-cutoff, "
            "--cell-percentage-cutoff2 or --nonz-mean-cutoff"
        )
    summary = filtered.uns["filter_genes"]
    report = {
        "reference": str(reference_path),
        "labels_key": labels_key,
        "layer": layer,
        "cell_count_cutoff": cell_count_cutoff,
        "cell_percentage_cutoff2": cell_percentage_cutoff2,
        "nonz_mean_cutoff": nonz_mean_cutoff,
        "n_cells": summary["n_cells_total"],
        "n_genes_in": summary["n_genes_in"],
        "n_genes_kept": summary["n_genes_kept"],
        "n_genes_undetected": summary["n_genes_undetected"],
        "cells_per_type": {str(name): int(count) for name, count in filtered.obs[labels_key].value_counts().items()},
    }
    with staged_outputs(outdir) as staging:
        filtered.write_h5ad(staging / f"{OUTPUT_PREFIX}.filtered.h5ad")
        plot_gene_filter(filtered, staging / f"{OUTPUT_PREFIX}.filter_genes.png", title=reference_path.name)
        (staging / f"{OUTPUT_PREFIX}.filter_genes.json").write_text(json.dumps(report, indent=2) + "\n")
    logger.info("Kept %d of %d genes; wrote %s", summary["n_genes_kept"], summary["n_genes_in"],
                outdir / f"{OUTPUT_PREFIX}.filtered.h5ad")
