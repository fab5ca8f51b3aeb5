"""``tissuemap plan``: which samples are mapped together and with which settings, as ``mapping_plan.csv``."""

from __future__ import annotations

from pathlib import Path

import click

from tissuemap.defaults import MAPPING_DETECTION_ALPHA
from tissuemap.plan import DEFAULT_MAPPING_MODE, MAPPING_MODES

POSITIVE = click.FloatRange(min=0, min_open=True)


@click.command()
@click.option("--input", "samplesheet", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Samplesheet CSV (see README).")
@click.option("--mapping-mode", type=click.Choice(MAPPING_MODES), default=DEFAULT_MAPPING_MODE, show_default=True,
              help="Fit each sample alone, all samples together, or the samples of each slide (samplesheet column "
                   "'slide') together.")
@click.option("--n-cells-per-location", type=POSITIVE, default=None,
              help="Expected cells per spot for samples without their own value in the samplesheet (needed when "
                   "some sample has none).")
@click.option("--detection-alpha", type=POSITIVE, default=MAPPING_DETECTION_ALPHA, show_default=True,
              help="Regularisation of within-slide detection variation, for samples without their own value.")
@click.option("--reference", default=None,
              help="The run's single-cell reference, to learn the signatures from (checked: it or --signatures).")
@click.option("--labels-key", default=None, help="The run's obs column of cell types (needed with --reference).")
@click.option("--signatures", default=None, help="The run's signatures.csv of an earlier run, instead of --reference.")
@click.option("--outdir", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output folder.")
def plan(samplesheet: Path, mapping_mode: str, n_cells_per_location: float | None, detection_alpha: float,
         reference: str | None, labels_key: str | None, signatures: str | None, outdir: Path) -> None:
    """Check the run's choices and write OUTDIR/mapping_plan.csv: each sample's mapping group, slide, cells per spot
    and detection alpha.

    Both `tissuemap run` and the Nextflow pipeline run it before any other step; each `tissuemap map` reads its
    samples' settings from it (--plan). Paths are not opened here (the samplesheet and input checks do that).
    """
    from tissuemap.log import logger
    from tissuemap.plan import check_signature_source, mapping_groups, write_plan
    from tissuemap.samplesheet import read_samplesheet

    check_signature_source(reference, labels_key, signatures)
    samples = read_samplesheet(samplesheet, check_paths=False)
    path = write_plan(samples, mapping_mode, n_cells_per_location, detection_alpha, outdir)
    groups = mapping_groups(samples, mapping_mode)
    logger.info("%s mode: %d mapping task(s): %s; wrote %s", mapping_mode, len(groups),
                "; ".join(f"{group} ({', '.join(names)})" for group, names in groups.items()), path)
