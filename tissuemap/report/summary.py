"""The HTML summary of a run: one row per sample linking to its report, and the cell-type mix of every sample.

Samples are found by their ``NAME.qc.json`` (``tissuemap qc``) and ``NAME.abundance.h5ad`` (``tissuemap map``)
anywhere under the input folder: the results folder of ``tissuemap run`` (one sub-folder per sample) or a flat
folder of staged files.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tissuemap.convergence import notice
from tissuemap.errors import InputError
from tissuemap.log import counted, logger
from tissuemap.report.html import (
    Image,
    Table,
    format_number,
    format_percent,
    png_data_uri,
)
from tissuemap.report.inputs import (
    abundance_table,
    cell_type_proportions,
    read_abundance,
    read_json,
)

SAMPLE_FILE_SUFFIXES = {"qc": ".qc.json", "abundance": ".abundance.h5ad"}
# Where a sample's report lies, relative to the summary: the layout of `tissuemap run` and of the Nextflow results.
DEFAULT_REPORT_LINK = "{sample}/{sample}.report.html"
TOP_TYPES = 3
SECTIONS = [("samples", "Samples"), ("composition", "Cell-type composition")]


@dataclass
class SampleFiles:
    """The summary's input files of one sample (``None`` where a step has not written its file)."""

    qc: Path | None = None
    abundance: Path | None = None


def find_samples(input_dir: str | os.PathLike, only: Sequence[str] | None = None) -> dict[str, SampleFiles]:
    """Samples under ``input_dir`` by name, in name order, from their ``.qc.json`` and ``.abundance.h5ad`` files.

    Hidden folders (the steps' staging folders) are skipped. ``only``: these samples, in this order (a rerun's
    results folder may hold samples no longer in the samplesheet).

    Raises
    ------
    InputError
        When no sample is found, a sample of ``only`` is not found, or a sample's file is found twice.
    """
    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        raise InputError(f"{input_dir}: no such folder; give the results folder as --input-dir")
    samples: dict[str, SampleFiles] = {}
    for kind, suffix in SAMPLE_FILE_SUFFIXES.items():
        for path in sorted(input_dir.rglob(f"*{suffix}")):
            if any(part.startswith(".") for part in path.relative_to(input_dir).parts):
                continue
            files = samples.setdefault(path.name[: -len(suffix)], SampleFiles())
            if getattr(files, kind) is not None:
                raise InputError(f"{path}: a second {suffix} file of sample {path.name[: -len(suffix)]!r} (the first: "
                                 f"{getattr(files, kind)}); give a folder holding one run's results")
            setattr(files, kind, path)
    if only is not None:
        missing = [name for name in only if name not in samples]
        if missing:
            raise InputError(f"{input_dir}: no {missing[0]}.qc.json or {missing[0]}.abundance.h5ad found; run "
                             "`tissuemap qc` on it first, or leave it out of --samples")
        return {name: samples[name] for name in only}
    if not samples:
        raise InputError(f"{input_dir}: no NAME.qc.json or NAME.abundance.h5ad found; run `tissuemap qc` and "
                         "`tissuemap map` first, or give the results folder as --input-dir")
    return dict(sorted(samples.items()))


def _sample_row(name: str, files: SampleFiles, report_link: str):
    """The summary table's cells for one sample, and its mean cell-type proportions (``None`` if not mapped)."""
    qc = read_json(files.qc) if files.qc else None
    cells = {
        "spots": format_number(qc["spots_kept"]) if qc else "–",
        "median UMIs": format_number(qc["umis_per_spot"]["median"]) if qc else "–",
        "shared genes": "not mapped",
        "cells": "–",
        "cells per spot": "–",
        "top types": "–",
    }
    if files.abundance is None:
        # not mapped: no report to link to
        return [(None, name), *cells.values()], None
    adata = read_abundance(files.abundance, backed=True)
    try:
        abundance = abundance_table(adata)
        cells["shared genes"] = format_number(adata.n_vars)
        if qc is None:
            cells["spots"] = format_number(adata.n_obs)
    finally:
        adata.file.close()
    totals = abundance.sum(axis=1)
    mean_proportions = cell_type_proportions(abundance).mean()
    top = mean_proportions.nlargest(TOP_TYPES)
    cells["cells"] = format_number(float(totals.sum()))
    cells["cells per spot"] = format_number(float(totals.median()))
    cells["top types"] = ", ".join(f"{cell_type} {format_percent(share)}" for cell_type, share in top.items())
    return [(report_link.format(sample=name), name), *cells.values()], mean_proportions


def training_notices(input_dir: Path, found: dict[str, SampleFiles]) -> list[str]:
    """Notices of training that had not levelled off: the signature regression's (its history anywhere under
    ``input_dir``) and each sample's mapping (its history beside its ``.abundance.h5ad``)."""
    histories = [(path, "The signature regression")
                 for path in sorted(input_dir.rglob("reference.signatures_history.json"))
                 if not any(part.startswith(".") for part in path.relative_to(input_dir).parts)]
    histories += [(files.abundance.with_name(f"{name}.mapping_history.json"), f"The mapping of {name}")
                  for name, files in found.items() if files.abundance is not None]
    texts = [notice(read_json(path).get("convergence"), what) for path, what in histories if path.is_file()]
    return [text for text in texts if text]


def write_summary(input_dir: str | os.PathLike, outdir: str | os.PathLike,
                  report_link: str = DEFAULT_REPORT_LINK, samples: Sequence[str] | None = None) -> Path:
    """Write ``outdir/summary.html``: a row per sample found under ``input_dir``, a heat map of the mean
    cell-type proportions of every mapped sample, and a notice of any training that had not levelled off
    (:func:`training_notices`).

    Parameters
    ----------
    input_dir
        Folder searched (with its sub-folders) for ``NAME.qc.json`` and ``NAME.abundance.h5ad``.
    outdir
        Folder for ``summary.html``.
    report_link
        Link from the summary to a sample's report; ``{sample}`` stands for the sample name.
    samples
        The samples to show, in this order; ``None``: every sample found, by name.

    Raises
    ------
    InputError
        When no sample is found, or an input file is unreadable.
    """
    import pandas as pd

    from tissuemap.outputs import staged_outputs
    from tissuemap.report.figures import proportion_heatmap
    from tissuemap.report.html import render_page

    if "{sample}" not in report_link:
        raise InputError(f"--report-link: {report_link!r} has no '{{sample}}'; e.g. {DEFAULT_REPORT_LINK}")
    found = find_samples(input_dir, samples)
    logger.info("summary of %s: %s", counted(len(found), "sample"), ", ".join(found))
    rows, proportions = [], {}
    for name, files in found.items():
        row, mean_proportions = _sample_row(name, files, report_link)
        rows.append(row)
        if mean_proportions is not None:
            proportions[name] = mean_proportions
    table = Table(
        columns=["sample", "spots", "median UMIs per spot", "genes shared with the signatures", "estimated cells (q05)",
                 "cells per spot, median (q05)", "most abundant types (mean proportion)"],
        rows=rows,
        caption=f"Samples: {len(found)}, mapped: {len(proportions)}",
        link_columns=frozenset({0}),
    )
    composition = None
    if proportions:
        mean_proportions = pd.DataFrame(proportions).T
        composition = {
            "image": Image(
                "Mean cell-type proportions",
                png_data_uri(proportion_heatmap(mean_proportions)),
                "Per sample, the mean over spots of each cell type's share of the spot's cells (q05 abundance "
                "normalised per spot). Blank: a cell type not in that sample's signatures.",
            ),
            "table": Table(
                columns=["sample", *mean_proportions.columns],
                rows=[[name, *(format_percent(value) if pd.notna(value) else "–" for value in values)]
                      for name, values in mean_proportions.iterrows()],
                caption="Mean cell-type proportions",
            ),
        }
    outdir = Path(outdir)
    with staged_outputs(outdir) as staging:
        render_page("summary.html.j2", staging / "summary.html", title="tissuemap summary", sections=SECTIONS,
                    samples=table, composition=composition, notices=training_notices(Path(input_dir), found))
    logger.info("wrote %s", outdir / "summary.html")
    return outdir / "summary.html"
