"""MultiQC custom content from the QC step's per-sample summaries (``NAME.qc.json``).

MultiQC shows any file named ``*_mqc.json`` that carries its own section configuration (MultiQC's "custom content").
:func:`write_multiqc_content` writes two of them, so that a run over many samples gets one comparable view:

- ``tissuemap_qc_mqc.json``: a table, one row per sample (spots in tissue, kept and removed, genes, median UMIs and
  genes per spot, median mitochondrial share);
- ``tissuemap_spots_mqc.json``: a bar graph of the spots kept and removed per sample.

Only plain Python is used: the step runs in the tissuemap environment, MultiQC itself in its own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tissuemap.errors import InputError
from tissuemap.log import counted, logger
from tissuemap.outputs import staged_outputs

QC_SUFFIX = ".qc.json"
TABLE_FILE = "tissuemap_qc_mqc.json"
SPOTS_FILE = "tissuemap_spots_mqc.json"


@dataclass(frozen=True)
class Column:
    """A column of the QC table: its title and description in MultiQC, where its value sits in ``NAME.qc.json``
    (a path of keys), a factor applied to it, and MultiQC's number format."""

    title: str
    description: str
    keys: tuple[str, ...]
    factor: float = 1.0
    number_format: str = "{:,.0f}"
    suffix: str = ""


QC_COLUMNS = {
    "spots_in_tissue": Column("Spots in tissue", "Spots under the tissue, before QC", ("spots_in_tissue",)),
    "spots_kept": Column("Spots kept", "Spots left for mapping after QC", ("spots_kept",)),
    "spots_removed": Column("Spots removed", "Spots removed by QC (--min-counts)", ("spots_removed", "total")),
    "genes_in_matrix": Column("Genes", "Genes in the matrix after moving mitochondrial genes out",
                              ("genes_in_matrix",)),
    "median_umis": Column("Median UMIs", "Median UMIs per kept spot (mitochondrial genes excluded)",
                          ("umis_per_spot", "median")),
    "median_genes": Column("Median genes", "Median detected genes per kept spot", ("genes_per_spot", "median")),
    "median_mt_percent": Column("Median MT", "Median share of a kept spot's UMIs from mitochondrial genes",
                                ("mt_fraction", "median"), factor=100.0, number_format="{:,.1f}", suffix="%"),
}


def _value(summary: dict, column: Column, path: Path) -> float:
    value = summary
    for key in column.keys:
        if not isinstance(value, dict) or key not in value:
            raise InputError(f"{path}: no {'.'.join(column.keys)!r}; it is not an output of `tissuemap qc`, "
                             "rerun that step")
        value = value[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{path}: {'.'.join(column.keys)!r} is {value!r}, not a number; rerun `tissuemap qc`")
    return value * column.factor


def read_qc_metrics(input_dir: str | Path) -> dict[str, dict[str, float]]:
    """The QC table's values (see ``QC_COLUMNS``) of every ``NAME.qc.json`` under ``input_dir``, by sample.

    Sub-folders are searched too (a results folder holds one per sample), hidden ones excepted. Samples are sorted
    by name. Raises :class:`InputError` when none is found, when one is not valid JSON or lacks a value, when its
    ``sample`` differs from its file name, or when two files hold the same sample.
    """
    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        raise InputError(f"{input_dir}: not a folder; give the --input-dir that holds the NAME{QC_SUFFIX} files")
    paths = sorted(
        path for path in input_dir.rglob(f"*{QC_SUFFIX}")
        if not any(part.startswith(".") for part in path.relative_to(input_dir).parts)
    )
    if not paths:
        raise InputError(f"{input_dir}: no NAME{QC_SUFFIX} file found; run `tissuemap qc` first, or give the "
                         "--input-dir that holds its outputs")
    metrics: dict[str, dict[str, float]] = {}
    found_in: dict[str, Path] = {}
    for path in paths:
        try:
            summary = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise InputError(f"{path}: not valid JSON ({err.msg}, line {err.lineno}); rerun `tissuemap qc`") from None
        sample = path.name[: -len(QC_SUFFIX)]
        if not isinstance(summary, dict) or summary.get("sample") != sample:
            raise InputError(f"{path}: its 'sample' is not {sample!r}, the name of the file; rerun `tissuemap qc` "
                             "instead of renaming its outputs")
        if sample in found_in:
            raise InputError(f"{path}: sample {sample!r} is also in {found_in[sample]}; give an --input-dir that "
                             "holds each sample once")
        found_in[sample] = path
        metrics[sample] = {name: _value(summary, column, path) for name, column in QC_COLUMNS.items()}
    return dict(sorted(metrics.items()))


def qc_table_section(metrics: dict[str, dict[str, float]]) -> dict:
    """MultiQC custom content: a table of the QC metrics, one row per sample."""
    return {
        "id": "tissuemap_qc",
        "section_name": "tissuemap: spot QC",
        "description": "Spot quality control of each Visium sample by <code>tissuemap qc</code>: spots under the "
                       "tissue, kept and removed, and the counts of the kept spots.",
        "plot_type": "table",
        "pconfig": {"id": "tissuemap_qc_table", "title": "tissuemap: spot QC", "namespace": "tissuemap"},
        "headers": {
            name: {"title": column.title, "description": column.description, "format": column.number_format,
                   "suffix": column.suffix, "min": 0}
            for name, column in QC_COLUMNS.items()
        },
        "data": metrics,
    }


def spots_bargraph_section(metrics: dict[str, dict[str, float]]) -> dict:
    """MultiQC custom content: a bar per sample of its spots kept and removed by QC."""
    return {
        "id": "tissuemap_spots",
        "section_name": "tissuemap: spots kept and removed",
        "description": "Spots under the tissue of each sample, split into those kept for mapping and those removed "
                       "by QC.",
        "plot_type": "bargraph",
        "pconfig": {"id": "tissuemap_spots_plot", "title": "tissuemap: spots kept and removed", "ylab": "Spots"},
        "categories": {
            "spots_kept": {"name": "Kept", "color": "#1b9e77"},
            "spots_removed": {"name": "Removed", "color": "#d95f02"},
        },
        "data": {sample: {"spots_kept": values["spots_kept"], "spots_removed": values["spots_removed"]}
                 for sample, values in metrics.items()},
    }


def write_multiqc_content(input_dir: str | Path, outdir: str | Path) -> list[Path]:
    """Write ``tissuemap_qc_mqc.json`` and ``tissuemap_spots_mqc.json`` into ``outdir`` from the ``NAME.qc.json``
    files under ``input_dir`` (:func:`read_qc_metrics`); return their paths."""
    metrics = read_qc_metrics(input_dir)
    sections = {TABLE_FILE: qc_table_section(metrics), SPOTS_FILE: spots_bargraph_section(metrics)}
    with staged_outputs(outdir) as staging:
        for name, section in sections.items():
            (staging / name).write_text(json.dumps(section, indent=2) + "\n")
    logger.info("MultiQC content of %s written to %s: %s", counted(len(metrics), "sample"), outdir,
                ", ".join(sections))
    return [Path(outdir) / name for name in sections]
