"""``tissuemap multiqc-content``: the samples' QC metrics as MultiQC custom content."""

from __future__ import annotations

from pathlib import Path

import click

FOLDER = click.Path(file_okay=False, path_type=Path)


@click.command("multiqc-content")
@click.option("--input-dir", required=True, type=FOLDER,
              help="Folder holding the NAME.qc.json files of `tissuemap qc` (searched with its sub-folders).")
@click.option("--outdir", required=True, type=FOLDER,
              help="Folder for tissuemap_qc_mqc.json and tissuemap_spots_mqc.json.")
def multiqc_content(input_dir: Path, outdir: Path) -> None:
    """Write every sample's QC metrics as MultiQC custom content: a table (tissuemap_qc_mqc.json) and a bar graph of
    the spots kept and removed (tissuemap_spots_mqc.json). Run `multiqc OUTDIR` to see them."""
    from tissuemap.multiqc import write_multiqc_content

    write_multiqc_content(input_dir, outdir)
