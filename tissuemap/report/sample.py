"""The HTML report of one sample: spot QC, mapping QC, and the cells of every type over the tissue.

A Visium HD sample's texts say "bins" where a Visium sample's say "spots" (:mod:`tissuemap.locations`).

Inputs, found in one folder by their prefixed names: ``NAME.qc.json`` and the ``NAME.qc_*.png`` plots of
``tissuemap qc``; ``NAME.abundance.h5ad``, ``NAME.mapping_history.json`` and the ``NAME.mapping_*.png`` plots of
``tissuemap map``.
"""

from __future__ import annotations

import os
from pathlib import Path

from tissuemap.convergence import notice
from tissuemap.locations import SPOTS, Locations, locations_of
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

# uns['mod'] entries of NAME.abundance.h5ad that are data, not settings of the fit
MOD_DATA_KEYS = ("factor_names", "var_names", "obs_names")


def plot_descriptions(locations: Locations) -> dict[str, tuple[str, str]]:
    """Titles and captions of the step plots a report knows; any other NAME.qc_*/NAME.mapping_* plot is shown by
    name."""
    one, many = locations.one, locations.many
    return {
        "qc_histograms": (f"{qc_title(locations)} metrics",
                          f"UMIs and genes per {one} and mitochondrial fraction; removed {many} in red."),
        "qc_spatial": (f"UMIs per {one} over the tissue", f"{many.capitalize()} removed by QC are marked in red."),
        "mapping_elbo": ("Mapping training history", "Loss (-ELBO) per training step: it should level off by the end."),
        "mapping_observed_vs_expected": (
            "Observed against expected counts",
            f"Each {one} and gene's count against the model's expectation: entries along the diagonal mean a good "
            "fit.",
        ),
        "mapping_cells_vs_counts": (
            "Cells, counts and detection",
            f"Estimated cells per {one} against its counts, and the per-{one} detection sensitivity around its "
            "slide's mean.",
        ),
    }


def qc_title(locations: Locations) -> str:
    """"Spot QC", or "Bin QC" for Visium HD."""
    return f"{locations.one.capitalize()} QC"


def sections(locations: Locations) -> list[tuple[str, str]]:
    """The page's sections: anchor and heading."""
    return [
        ("overview", "Overview"),
        ("qc", qc_title(locations)),
        ("mapping", "Mapping QC"),
        ("abundance", "Cell abundance"),
        ("overlay", "Cell types overlaid"),
        ("dominant", "Dominant cell type"),
        ("proportions", "Proportions"),
        ("parameters", "Parameters and versions"),
    ]


def step_plots(folder: Path, sample: str, step: str, locations: Locations) -> list[Image]:
    """The ``{sample}.{step}_*.png`` plots in ``folder``, known ones first in their order, as page images."""
    descriptions = plot_descriptions(locations)
    found = {path.name[len(sample) + 1: -len(".png")]: path for path in folder.glob(f"{sample}.{step}_*.png")}
    ordered = [name for name in descriptions if name in found] + sorted(set(found) - set(descriptions))
    images = []
    for name in ordered:
        title, caption = descriptions.get(name, (name.replace("_", " "), ""))
        images.append(image_from_file(found[name], title, caption))
    return images


def _quantile_range(quantiles: dict) -> str:
    return f"{format_number(quantiles['median'])} ({format_number(quantiles['q05'])} – {format_number(quantiles['q95'])})"


def qc_locations(qc: dict) -> Locations:
    """What ``NAME.qc.json``'s sample's locations are called: its ``bin_size_um`` says (``null``: spots)."""
    return locations_of(qc.get("bin_size_um"))


def qc_rows(qc: dict) -> list[tuple[str, str]]:
    """Key numbers of ``NAME.qc.json``."""
    locations = qc_locations(qc)
    one, many = locations.one, locations.many
    removed = qc["spots_removed"]
    reasons = ", ".join(f"{reason.replace('_', ' ')}: {count}" for reason, count in removed["by_reason"].items())
    return [
        (f"{many} in tissue", format_number(qc["spots_in_tissue"])),
        (f"{many} kept", format_number(qc["spots_kept"])),
        (f"{many} removed", f"{format_number(removed['total'])} ({reasons})" if reasons else format_number(removed["total"])),
        ("genes in the matrix", format_number(qc["genes_in_matrix"])),
        ("mitochondrial genes moved out of the matrix", format_number(len(qc["mt_genes_removed"]))),
        (f"UMIs per {one}, median (5% – 95%)", _quantile_range(qc["umis_per_spot"])),
        (f"genes per {one}, median (5% – 95%)", _quantile_range(qc["genes_per_spot"])),
        ("mitochondrial fraction of UMIs, median", format_percent(qc["mt_fraction"]["median"])),
        ("Space Ranger version", str(qc.get("software_version") or "–")),
        *([("Visium HD bins", f"{format_number(qc['bin_size_um'])} µm squares")] if qc.get("bin_size_um") else []),
        ("source", qc["source"]),
    ]


def mapping_rows(history: dict, locations: Locations = SPOTS) -> list[tuple[str, str]]:
    """Key numbers of ``NAME.mapping_history.json`` (a minibatch fit's in epochs, with its batch size, counted in
    ``locations``)."""
    unit = history.get("loss_unit", "step")
    batch = ([(f"{locations.many} per training step", format_number(history["batch_size"]))]
             if history.get("batch_size") else [])
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


def cell_type_table(abundance, proportions, locations: Locations) -> Table:
    """One row per cell type: cells per spot and in all, mean proportion, spots it dominates."""
    one, many = locations.one, locations.many
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
        columns=["cell type", f"mean cells per {one} ({ABUNDANCE_STAT})", f"cells in all {many} ({ABUNDANCE_STAT})",
                 "mean proportion", f"{many} where most abundant"],
        rows=rows,
        caption=f"{abundance.shape[1]} cell types over {abundance.shape[0]} {locations.kind}",
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
    locations = view.locations
    one, many = locations.one, locations.many
    overlay = figures.overlay_types(abundance)
    logger.info("%s: drawing %d cell types over %d %s", sample, abundance.shape[1], abundance.shape[0], many)
    totals = abundance.sum(axis=1)
    overview = [
        (f"{many} mapped", format_number(adata.n_obs)),
        ("cell types", format_number(abundance.shape[1])),
        (f"estimated cells in all {many} ({ABUNDANCE_STAT})", format_number(float(totals.sum()))),
        (f"estimated cells per {one}, median ({ABUNDANCE_STAT})", format_number(float(totals.median()))),
        (f"median UMIs per {one}", format_number(qc["umis_per_spot"]["median"])),
    ]
    images = {
        "abundance": Image(
            f"Cells of each type per {one}",
            png_data_uri(figures.abundance_maps(abundance, view)),
            f"Estimated number of cells ({ABUNDANCE_STAT} of the posterior: at least this many, with 95% "
            f"probability) of every cell type in every {one}. Each panel's colour scale ends at the "
            f"{100 * figures.COLOUR_SCALE_QUANTILE:g}% quantile of its values.",
        ),
        "overlay": Image(
            f"The {len(overlay)} most abundant cell types together",
            png_data_uri(figures.overlay_map(abundance, view, overlay)),
            f"As cell2location's plot_spatial: the {len(overlay)} cell types with the most cells ({ABUNDANCE_STAT}), "
            f"each in its colour, whose intensity is the type's cells per {one} (from 0 to the "
            f"{100 * figures.COLOUR_SCALE_QUANTILE:g}% quantile of its values); a {one} shared by several types "
            "shows a mix of their colours, an empty one the tissue (in grey).",
        ),
        "spot_qc": Image(
            "Counts, cells and detection over the tissue",
            png_data_uri(figures.spot_qc_maps(adata, view)),
            f"As cell2location's plot_spatial_QC_across_batches, for this slide: UMIs per {one}, the estimated total "
            f"cells per {one} and the detection sensitivity y_s. Cells should follow the tissue's structure; "
            "detection should vary smoothly, without the structure of the cells.",
        ),
        "dominant": Image(
            f"Dominant cell type per {one}",
            png_data_uri(figures.dominant_type_map(abundance.idxmax(axis=1), abundance.columns, view)),
            f"Each {one} coloured by its most abundant cell type ({ABUNDANCE_STAT} abundance).",
        ),
        "proportions": Image(
            "Cell-type proportions",
            png_data_uri(figures.proportion_bars(proportions, locations)),
            f"The {ABUNDANCE_STAT} abundance normalised per {one}: mean over {many} and the middle half of the "
            f"{many}.",
        ),
    }
    outdir = Path(outdir)
    with staged_outputs(outdir) as staging:
        render_page(
            "sample.html.j2",
            staging / f"{sample}.report.html",
            title=f"tissuemap report: {sample}",
            sections=sections(locations),
            qc_title=qc_title(locations),
            notices=[text for text in [notice(history.get("convergence"), "Mapping")] if text],
            overview=overview,
            qc=qc_rows(qc),
            qc_plots=step_plots(input_dir, sample, "qc", locations),
            mapping=mapping_rows(history, locations),
            mapping_plots=step_plots(input_dir, sample, "mapping", locations),
            images=images,
            cell_types=cell_type_table(abundance, proportions, locations),
            parameters=[*settings_rows(qc["thresholds"], "qc."), *settings_rows(mapping_settings(adata), "map.")],
            versions=list(package_versions().items()),
        )
    logger.info("%s: wrote %s", sample, outdir / f"{sample}.report.html")
    return outdir / f"{sample}.report.html"
