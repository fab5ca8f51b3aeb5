"""``tissuemap qc``: read one Visium sample, QC its spots, write NAME.qc.h5ad, NAME.qc.json and two figures."""

from __future__ import annotations

from pathlib import Path

import click

from tissuemap.defaults import DEFAULT_BIN_SIZE
from tissuemap.qc import DEFAULT_MIN_COUNTS
from tissuemap.samplesheet import BIN_SIZES

POSITIVE = click.FloatRange(min=0, min_open=True)


@click.command()
@click.option("--sample", required=True, help="Sample name (as in the samplesheet): output file prefix and library id.")
@click.option(
    "--input", "input_path", required=True, type=click.Path(path_type=Path),
    help="Space Ranger outs/ folder, or .h5ad with raw counts in X and obsm['spatial'].",
)
@click.option("--outdir", required=True, type=click.Path(path_type=Path), help="Folder for the outputs.")
@click.option(
    "--bin-size", type=click.Choice([str(size) for size in BIN_SIZES]), default=None,
    help=f"Visium HD only: the bins to read from binned_outputs/, in micrometres [default: {DEFAULT_BIN_SIZE}]. "
    "Ignored, with a log line, for standard Visium and .h5ad input.",
)
@click.option(
    "--min-counts", type=click.IntRange(min=0), default=DEFAULT_MIN_COUNTS,
    help="Remove spots with fewer UMIs (mitochondrial genes excluded). The default only drops empty spots: a fixed "
    "higher cut depends on the gene panel (ordinary spots hold ~50 UMIs on a 100-gene panel, ~14,000 genome-wide).",
)
@click.option(
    "--n-cells-per-location", type=POSITIVE, default=None,
    help="Expected cells per spot in this sample, stored for the mapping step (its default applies when omitted).",
)
@click.option(
    "--detection-alpha", type=POSITIVE, default=None,
    help="Regularisation of within-slide RNA detection variation, stored for the mapping step (its default applies "
    "when omitted).",
)
@click.option("--slide", default=None, show_default="the sample name", help="Slide (batch) label for joint mapping.")
def qc(
    sample: str,
    input_path: Path,
    outdir: Path,
    bin_size: str | None,
    min_counts: int,
    n_cells_per_location: float | None,
    detection_alpha: float | None,
    slide: str | None,
) -> None:
    """Read a Visium (or Visium HD) sample, move mitochondrial genes out of the matrix and remove spots under
    --min-counts."""
    import json

    from tissuemap.io import read_spatial_sample
    from tissuemap.log import logger
    from tissuemap.outputs import staged_outputs
    from tissuemap.plotting.qc import plot_qc_histograms, plot_qc_spatial
    from tissuemap.qc import run_qc
    from tissuemap.samplesheet import validate_name

    validate_name(sample)
    if slide is not None:
        validate_name(slide, column="slide", where="--slide")
    adata = read_spatial_sample(input_path, sample, None if bin_size is None else int(bin_size))
    result, summary = run_qc(
        adata, sample, min_counts,
        n_cells_per_location=n_cells_per_location, detection_alpha=detection_alpha, slide=slide,
    )
    report = {"sample": sample, "source": str(input_path.resolve()), **summary}
    with staged_outputs(outdir) as staging:
        result.write_h5ad(staging / f"{sample}.qc.h5ad", compression="gzip")
        (staging / f"{sample}.qc.json").write_text(json.dumps(report, indent=2) + "\n")
        plot_qc_histograms(result, staging / f"{sample}.qc_histograms.png")
        plot_qc_spatial(result, sample, staging / f"{sample}.qc_spatial.png")
    logger.info("%s: wrote %s.qc.h5ad, .qc.json, .qc_histograms.png, .qc_spatial.png to %s", sample, sample, outdir)
