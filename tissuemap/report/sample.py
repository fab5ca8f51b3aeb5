"""The HTML report of one sample: spot QC, mapping QC, and the cells of every type over the tissue.

Inputs, found in one folder by their prefixed names: ``NAME.qc.json`` and the ``NAME.qc_*.png`` plots of
``tissuemap qc``; ``NAME.abundance.h5ad``, ``NAME.mapping_history.json`` and the ``NAME.mapping_*.png`` plots of
``tissuemap map``.
"""

from __future__ import annotations

import os
from pathlib import Path

from tissuemap.convergence import notice
from tissuemap.log import logger
from tissuemap.report.html import (
    Image,
    Table,
    converged_text,
    format_number,
    format_percent,
    image_from_file,
    png_data_uri,
    settings_rows,
)
from tissuemap.report.inputs import (
    ABUNDANCE_STAT,
    abundance_table,
    cell_type_proportions,
    read_abundance,
    read_json,
    required_file,
)

# Titles and captions of the step plots a report knows; any other NAME.qc_*/NAME.mapping_* plot is shown by name.
PLOT_DESCRIPTIONS = {
    "qc_histograms": ("Spot QC metrics", "UMIs and genes per spot and mitochondrial fraction; removed spots in red."),
    "qc_spatial": ("UMIs per spot over the tissue", "Spots removed by QC are outlined in red."),
    "mapping_elbo": ("Mapping training history", "Loss (-ELBO) per training step: it should level off by the end."),
    "mapping_observed_vs_expected": (
        "Observed against expected counts",
        "Each spot and gene's count against the model's expectation: entries along the diagonal mean a good fit.",
    ),
    "mapping_cells_vs_counts": (
        "Cells, counts and detection",
        "Estimated cells per spot against its counts, and the per-spot detection sensitivity around its slide's mean.",
    ),
}
# uns['mod'] entries of NAME.abundance.h5ad that are data, not settings of the fit
MOD_DATA_KEYS = ("factor_names", "var_names", "obs_names")
SECTIONS = [
    ("overview", "Overview"),
    ("qc", "Spot QC"),
    ("mapping", "Mapping QC"),
    ("abundance", "Cell abundance"),
    ("overlay", "Cell types overlaid"),
    ("dominant", "Dominant cell type"),
    ("proportions", "Proportions"),
    ("parameters", "Parameters and versions"),
]


def step_plots(folder: Path, sample: str, step: str) -> list[Image]:
    """The ``{sample}.{step}_*.png`` plots in ``folder``, known ones first in their order, as page images."""
    found = {path.name[len(sample) + 1: -len(".png")]: path for path in folder.glob(f"{sample}.{step}_*.png")}
    ordered = [name for name in PLOT_DESCRIPTIONS if name in found] + sorted(set(found) - set(PLOT_DESCRIPTIONS))
    images = []
    for name in ordered:
        title, caption = PLOT_DESCRIPTIONS.get(name, (name.replace("_", " "), ""))
        images.append(image_from_file(found[name], title, caption))
    return images


def _quantile_range(quantiles: dict) -> str:
    return f"{format_number(quantiles['median'])} ({format_number(quantiles['q05'])} – {format_number(quantiles['q95'])})"


def qc_rows(qc: dict) -> list[tuple[str, str]]:
    """Key numbers of ``NAME.qc.json``."""
    removed = qc["spots_removed"]
    reasons = ", ".join(f"{reason.replace('_', ' ')}: {count}" for reason, count in removed["by_reason"].items())
    return [
        ("spots in tissue", format_number(qc["spots_in_tissue"])),
        ("spots kept", format_number(qc["spots_kept"])),
        ("spots removed", f"{format_number(removed['total'])} ({reasons})" if reasons else format_number(removed["total"])),
        ("genes in the matrix", format_number(qc["genes_in_matrix"])),
        ("mitochondrial genes moved out of the matrix", format_number(len(qc["mt_genes_removed"]))),
        ("UMIs per spot, median (5% – 95%)", _quantile_range(qc["umis_per_spot"])),
        ("genes per spot, median (5% – 95%)", _quantile_range(qc["genes_per_spot"])),
        ("mitochondrial fraction of UMIs, median", format_percent(qc["mt_fraction"]["median"])),
        ("Space Ranger version", str(qc.get("software_version") or "–")),
        *([("Visium HD bins", f"{format_number(qc['bin_size_um'])} µm squares")] if qc.get("bin_size_um") else []),
        ("source", qc["source"]),
    ]


def mapping_rows(history: dict) -> list[tuple[str, str]]:
    """Key numbers of ``NAME.mapping_history.json`` (a minibatch fit's in epochs, with its batch size)."""
    unit = history.get("loss_unit", "step")
    batch = [("spots per training step", format_number(history["batch_size"]))] if history.get("batch_size") else []
    return [
        ("genes shared with the signatures", format_number(history["n_genes"])),
        ("samples fitted together", ", ".join(history["samples_fitted_together"])),
        *batch,
        (f"training {unit}s", format_number(history["steps"])),
        ("loss levelled off", converged_text(history.get("converged"))),
        ("final loss (-ELBO)", format_number(float(history["loss"][-1]), 6)),
        ("device", str(history["device"])),
        ("training time (s)", format_number(history["seconds"]["training"])),
        (f"{unit}s per second", format_number(history["iterations_per_second"])),
    ]


def mapping_settings(adata) -> dict:
    """The settings of the fit stored in ``uns['mod']`` (every entry but the data and the posterior summaries)."""
    return {key: value for key, value in adata.uns["mod"].items()
            if key not in MOD_DATA_KEYS and not key.startswith("post_sample_")}


def cell_type_table(abundance, proportions) -> Table:
    """One row per cell type: cells per spot and in all, mean proportion, spots it dominates."""
    dominant_counts = abundance.idxmax(axis=1).value_counts()
    rows = [
        [
            name,
            format_number(float(abundance[name].mean())),
            format_number(float(abundance[name].sum())),
            format_percent(float(proportions[name].mean())),
            format_number(int(dominant_counts.get(name, 0))),
        ]
        for name in abundance.columns
    ]
    return Table(
        columns=["cell type", f"mean cells per spot ({ABUNDANCE_STAT})", f"cells in all spots ({ABUNDANCE_STAT})",
                 "mean proportion", "spots where most abundant"],
        rows=rows,
        caption=f"{abundance.shape[1]} cell types over {abundance.shape[0]} spots",
    )


def write_sample_report(sample: str, input_dir: str | os.PathLike, outdir: str | os.PathLike) -> Path:
    """Write ``outdir/{sample}.report.html`` from the sample's QC and mapping outputs in ``input_dir``.

    Parameters
    ----------
    sample
        Sample name: the prefix of its files.
    input_dir
        Folder with ``{sample}.qc.json``, ``{sample}.abundance.h5ad``, ``{sample}.mapping_history.json`` and the
        steps' plots.
    outdir
        Folder for the report.

    Returns
    -------
    The path of the report.

    Raises
    ------
    InputError
        When an input file is missing or unreadable.
    """
    from tissuemap.outputs import staged_outputs
    from tissuemap.report import figures
    from tissuemap.report.html import render_page
    from tissuemap.versions import package_versions

    input_dir = Path(input_dir)
    qc = read_json(required_file(input_dir, f"{sample}.qc.json", "qc"))
    history = read_json(required_file(input_dir, f"{sample}.mapping_history.json", "map"))
    adata = read_abundance(required_file(input_dir, f"{sample}.abundance.h5ad", "map"))

    abundance = abundance_table(adata)
    proportions = cell_type_proportions(abundance)
    view = figures.tissue_view(adata, sample)
    overlay = figures.overlay_types(abundance)
    logger.info("%s: drawing %d cell types over %d spots", sample, abundance.shape[1], abundance.shape[0])
    totals = abundance.sum(axis=1)
    overview = [
        ("spots mapped", format_number(adata.n_obs)),
        ("cell types", format_number(abundance.shape[1])),
        (f"estimated cells in all spots ({ABUNDANCE_STAT})", format_number(float(totals.sum()))),
        (f"estimated cells per spot, median ({ABUNDANCE_STAT})", format_number(float(totals.median()))),
        ("median UMIs per spot", format_number(qc["umis_per_spot"]["median"])),
    ]
    images = {
        "abundance": Image(
            "Cells of each type per spot",
            png_data_uri(figures.abundance_maps(abundance, view)),
            f"Estimated number of cells ({ABUNDANCE_STAT} of the posterior: at least this many, with 95% "
            f"probability) of every cell type in every spot. Each panel's colour scale ends at the "
            f"{100 * figures.COLOUR_SCALE_QUANTILE:g}% quantile of its values.",
        ),
        "overlay": Image(
            f"The {len(overlay)} most abundant cell types together",
            png_data_uri(figures.overlay_map(abundance, view, overlay)),
            f"As cell2location's plot_spatial: the {len(overlay)} cell types with the most cells ({ABUNDANCE_STAT}), "
            f"each in its colour, whose intensity is the type's cells per spot (from 0 to the "
            f"{100 * figures.COLOUR_SCALE_QUANTILE:g}% quantile of its values); a spot shared by several types shows "
            "a mix of their colours, an empty one the tissue (in grey).",
        ),
        "spot_qc": Image(
            "Counts, cells and detection over the tissue",
            png_data_uri(figures.spot_qc_maps(adata, view)),
            "As cell2location's plot_spatial_QC_across_batches, for this slide: UMIs per spot, the estimated total "
            "cells per spot and the detection sensitivity y_s. Cells should follow the tissue's structure; detection "
            "should vary smoothly, without the structure of the cells.",
        ),
        "dominant": Image(
            "Dominant cell type per spot",
            png_data_uri(figures.dominant_type_map(abundance.idxmax(axis=1), abundance.columns, view)),
            f"Each spot coloured by its most abundant cell type ({ABUNDANCE_STAT} abundance).",
        ),
        "proportions": Image(
            "Cell-type proportions",
            png_data_uri(figures.proportion_bars(proportions)),
            f"The {ABUNDANCE_STAT} abundance normalised per spot: mean over spots and the middle half of the spots.",
        ),
    }
    outdir = Path(outdir)
    with staged_outputs(outdir) as staging:
        render_page(
            "sample.html.j2",
            staging / f"{sample}.report.html",
            title=f"tissuemap report: {sample}",
            sections=SECTIONS,
            notices=[text for text in [notice(history.get("convergence"), "Mapping")] if text],
            overview=overview,
            qc=qc_rows(qc),
            qc_plots=step_plots(input_dir, sample, "qc"),
            mapping=mapping_rows(history),
            mapping_plots=step_plots(input_dir, sample, "mapping"),
            images=images,
            cell_types=cell_type_table(abundance, proportions),
            parameters=[*settings_rows(qc["thresholds"], "qc."), *settings_rows(mapping_settings(adata), "map.")],
            versions=list(package_versions().items()),
        )
    logger.info("%s: wrote %s", sample, outdir / f"{sample}.report.html")
    return outdir / f"{sample}.report.html"
