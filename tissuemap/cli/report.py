"""``tissuemap report``: the self-contained HTML reports of a sample, of the reference, and of a whole run."""

from __future__ import annotations

from pathlib import Path

import click

from tissuemap.report.summary import DEFAULT_REPORT_LINK

FOLDER = click.Path(file_okay=False, path_type=Path)


@click.group("report")
def report() -> None:
    """Write an HTML report. Each sub-command writes one self-contained HTML file into --outdir (images embedded,
    nothing fetched from the network): open it in any browser, offline."""


@report.command("sample")
@click.option("--sample", required=True, help="Sample name: the prefix of its files.")
@click.option("--input-dir", required=True, type=FOLDER,
              help="Folder holding NAME.qc.json, NAME.abundance.h5ad, NAME.mapping_history.json and the steps' plots.")
@click.option("--outdir", required=True, type=FOLDER, help="Folder for NAME.report.html.")
def sample(sample: str, input_dir: Path, outdir: Path) -> None:
    """One sample: spot QC, mapping QC, the cells of every type over the tissue, the dominant type per spot,
    cell-type proportions, parameters and versions."""
    from tissuemap.report.sample import write_sample_report
    from tissuemap.samplesheet import validate_name

    write_sample_report(validate_name(sample), input_dir, outdir)


@report.command("reference")
@click.option("--input-dir", required=True, type=FOLDER,
              help="Folder holding the outputs of filter-genes and signatures (reference.filter_genes.json, "
                   "signatures.csv, reference.signatures_history.json, plots).")
@click.option("--outdir", required=True, type=FOLDER, help="Folder for reference.report.html.")
def reference(input_dir: Path, outdir: Path) -> None:
    """The reference: gene filter, signature training and QC, cells and marker genes per cell type."""
    from tissuemap.report.reference import write_reference_report

    write_reference_report(input_dir, outdir)


@report.command("summary")
@click.option("--input-dir", required=True, type=FOLDER,
              help="Results folder (searched with its sub-folders) or a flat folder holding every sample's "
                   "NAME.qc.json and NAME.abundance.h5ad.")
@click.option("--outdir", required=True, type=FOLDER, help="Folder for summary.html.")
@click.option("--report-link", default=DEFAULT_REPORT_LINK, show_default=True,
              help="Link from the summary to each sample's report, relative to --outdir; {sample} stands for the name.")
@click.option("--samples", default=None,
              help="Comma-separated sample names to show, in this order  [default: every sample found, by name]")
def summary(input_dir: Path, outdir: Path, report_link: str, samples: str | None) -> None:
    """The run: a row per sample (spots, median UMIs, shared genes, estimated cells, top cell types) linking to its
    report, and a heat map of the mean cell-type proportions of every sample."""
    from tissuemap.report.summary import write_summary

    names = None if samples is None else [name.strip() for name in samples.split(",") if name.strip()]
    write_summary(input_dir, outdir, report_link, names)
