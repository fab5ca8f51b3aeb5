"""The HTML report of the reference: gene filter, signature training and QC, and the cell types.

Inputs, found in one folder: ``reference.filter_genes.json`` and ``reference.filter_genes.png`` of
``tissuemap filter-genes``; ``signatures.csv``, ``reference.signatures_history.json`` and the
``reference.signatures_*.png`` plots of ``tissuemap signatures``.
"""

from __future__ import annotations

import os
from pathlib import Path

from tissuemap.convergence import notice
from tissuemap.log import logger
from tissuemap.report.html import (
    Table,
    converged_text,
    format_number,
    format_percent,
    image_from_file,
    settings_rows,
)
from tissuemap.report.inputs import read_json, required_file

PREFIX = "reference"
# Marker genes listed per cell type, and the least signature (counts per cell) a gene needs to be listed.
MARKERS_PER_TYPE = 5
MARKER_MIN_EXPRESSION = 0.5
SIGNATURE_PLOTS = {
    "signatures_elbo": ("Training history", "Loss (-ELBO) per epoch of the regression: it should level off by the end."),
    "signatures_obs_vs_expected": (
        "Observed against expected counts",
        "Each reference cell and gene's count against the fitted model's expectation.",
    ),
    "signatures_vs_average": (
        "Signatures against per-type averages",
        "Entries below the diagonal are expression the regression attributed to ambient RNA or batch effects.",
    ),
}
SECTIONS = [
    ("overview", "Overview"),
    ("filter", "Gene filter"),
    ("training", "Signatures"),
    ("cell-types", "Cell types"),
    ("parameters", "Parameters"),
]


def marker_genes(signatures, n: int = MARKERS_PER_TYPE, min_expression: float = MARKER_MIN_EXPRESSION) -> dict:
    """Per cell type, the ``n`` genes whose signature is most specific to it: the largest share of the gene's
    signature summed over types, among genes with at least ``min_expression`` counts per cell in the type."""
    shares = signatures.div(signatures.sum(axis=1).where(lambda total: total > 0, 1.0), axis=0)
    return {
        cell_type: shares.loc[signatures[cell_type] >= min_expression, cell_type].nlargest(n).index.tolist()
        for cell_type in signatures.columns
    }


def cell_type_table(cells_per_type: dict, signatures) -> Table:
    """One row per cell type: cells in the reference, expected UMIs per cell, most specific genes."""
    markers = marker_genes(signatures)
    total_cells = sum(cells_per_type.values())
    rows = [
        [
            name,
            format_number(cells_per_type.get(name, 0)),
            format_percent(cells_per_type.get(name, 0) / total_cells) if total_cells else "–",
            format_number(float(signatures[name].sum())),
            ", ".join(markers[name]) or "–",
        ]
        for name in signatures.columns
    ]
    return Table(
        columns=["cell type", "cells", "share of cells", "UMIs per cell (sum of signature)",
                 f"most specific genes (≥ {MARKER_MIN_EXPRESSION:g} counts per cell)"],
        rows=rows,
        caption=f"{signatures.shape[1]} cell types, signatures over {signatures.shape[0]:,} genes",
    )


def write_reference_report(input_dir: str | os.PathLike, outdir: str | os.PathLike) -> Path:
    """Write ``outdir/reference.report.html`` from the outputs of ``filter-genes`` and ``signatures``.

    Raises
    ------
    InputError
        When an input file is missing or unreadable.
    """
    import pandas as pd

    from tissuemap.outputs import staged_outputs
    from tissuemap.report.html import render_page

    input_dir = Path(input_dir)
    gene_filter = read_json(required_file(input_dir, f"{PREFIX}.filter_genes.json", "filter-genes"))
    history = read_json(required_file(input_dir, f"{PREFIX}.signatures_history.json", "signatures"))
    signatures = pd.read_csv(required_file(input_dir, "signatures.csv", "signatures"), index_col=0)
    filter_plot = required_file(input_dir, f"{PREFIX}.filter_genes.png", "filter-genes")

    elbo = history.get("elbo") or []
    overview = [
        ("cells", format_number(gene_filter["n_cells"])),
        ("cell types", format_number(signatures.shape[1])),
        ("genes kept by the filter", f"{gene_filter['n_genes_kept']:,} of {gene_filter['n_genes_in']:,}"),
        ("signature method", str(history["method"])),
        ("training epochs", format_number(history.get("epochs"))),
        ("final loss (-ELBO)", format_number(float(elbo[-1]), 6) if elbo else "–"),
        ("loss levelled off", converged_text(history.get("converged")) if elbo else "–"),
        ("device", str(history.get("device", "–"))),
        ("training time (s)", format_number(history.get("training_seconds"))),
    ]
    filter_numbers = [
        ("genes in the reference", format_number(gene_filter["n_genes_in"])),
        ("genes detected in no cell", format_number(gene_filter["n_genes_undetected"])),
        ("genes kept", format_number(gene_filter["n_genes_kept"])),
        ("cell_count_cutoff", format_number(gene_filter["cell_count_cutoff"])),
        ("cell_percentage_cutoff2", format_number(gene_filter["cell_percentage_cutoff2"])),
        ("nonz_mean_cutoff", format_number(gene_filter["nonz_mean_cutoff"])),
    ]
    plots = [
        image_from_file(input_dir / f"{PREFIX}.{name}.png", title, caption)
        for name, (title, caption) in SIGNATURE_PLOTS.items()
        if (input_dir / f"{PREFIX}.{name}.png").is_file()
    ]
    outdir = Path(outdir)
    with staged_outputs(outdir) as staging:
        render_page(
            "reference.html.j2",
            staging / f"{PREFIX}.report.html",
            title="tissuemap report: reference",
            sections=SECTIONS,
            notices=[text for text in [notice(history.get("convergence"), "The signature regression")] if text],
            overview=overview,
            filter_numbers=filter_numbers,
            filter_plot=image_from_file(
                filter_plot, "Gene filter",
                "Every detected gene by the number of cells where it is detected and its mean count there; genes in "
                "the grey area are removed.",
            ),
            signature_plots=plots,
            cell_types=cell_type_table(gene_filter["cells_per_type"], signatures),
            parameters=[*settings_rows({"reference": gene_filter["reference"], "labels_key": gene_filter["labels_key"]},
                                  "filter-genes."),
                        *settings_rows(history.get("settings", {}), "signatures.")],
        )
    logger.info("wrote %s", outdir / f"{PREFIX}.report.html")
    return outdir / f"{PREFIX}.report.html"
