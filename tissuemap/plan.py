"""The run's plan: where the signatures come from, which samples are fitted together, and each sample's settings.

Both engines take these decisions here and nowhere else: `tissuemap run` (tissuemap/runner/) calls
:func:`check_signature_source`, :func:`check_cells_per_location` and :func:`mapping_groups` to plan its steps, and
both it and the Nextflow pipeline run `tissuemap plan` once, before any other step, to write ``mapping_plan.csv``.
Nextflow forms its mapping tasks from that file's ``group`` column; every map step reads its samples' settings from
it (``tissuemap map --plan``).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from tissuemap.errors import InputError
from tissuemap.samplesheet import Sample

MAPPING_MODES = ("per-sample", "joint", "slide")
# each sample fitted alone, unless `--mapping-mode` says otherwise
DEFAULT_MAPPING_MODE = "per-sample"
PLAN_FILE = "mapping_plan.csv"
PLAN_COLUMNS = ("group", "sample", "slide", "n_cells_per_location", "detection_alpha")


def check_signature_source(reference: str | None, labels_key: str | None, signatures: str | None) -> None:
    """Signatures are learnt from a reference (with the obs column of its cell types) or given from an earlier run;
    never both, never neither."""
    if (reference is None) == (signatures is None):
        raise InputError(
            "give either --reference (with --labels-key; Nextflow: --labels_key) to learn signatures, or --signatures"
            + (": --signatures skips learning them (-profile test drops its reference then)" if reference else "")
        )
    if reference is not None and labels_key is None:
        raise InputError("--reference needs --labels-key (Nextflow: --labels_key): the obs column holding each cell's "
                         "type")


def mapping_groups(samples: list[Sample], mode: str) -> dict[str, list[str]]:
    """Samples fitted together, by group name, in samplesheet order: each alone (``per-sample``, group = sample),
    all together (``joint``) or those sharing a ``slide`` value (``slide``, group ``slide-SLIDE``; a sample without
    one is a slide of its own)."""
    if mode == "per-sample":
        return {sample.sample: [sample.sample] for sample in samples}
    if mode == "joint":
        return {"joint": [sample.sample for sample in samples]}
    if mode == "slide":
        groups: dict[str, list[str]] = {}
        for sample in samples:
            groups.setdefault(f"slide-{sample.slide or sample.sample}", []).append(sample.sample)
        return groups
    raise InputError(f"--mapping-mode: {mode!r} is not one of {', '.join(MAPPING_MODES)}")


def check_cells_per_location(samples: list[Sample], n_cells_per_location: float | None) -> None:
    """The run's ``n_cells_per_location`` is required when some sample has no value of its own in the samplesheet
    (it is tissue dependent: no default fits every tissue), and only then."""
    missing = [sample.sample for sample in samples if sample.n_cells_per_location is None]
    if missing and n_cells_per_location is None:
        raise InputError(
            f"--n-cells-per-location (Nextflow: --n_cells_per_location): sample(s) {', '.join(missing)} have no "
            "n_cells_per_location in the samplesheet; give the expected cells per spot (tissue dependent; the "
            "cell2location tutorial uses 30 for lymph node)"
        )


def sample_settings(samples: list[Sample], n_cells_per_location: float | None,
                    detection_alpha: float) -> dict[str, dict]:
    """Each sample's slide, expected cells per spot and detection alpha: its samplesheet value, else the run's
    (:func:`check_cells_per_location`)."""
    check_cells_per_location(samples, n_cells_per_location)
    return {
        sample.sample: {
            "slide": sample.slide or sample.sample,
            "n_cells_per_location": float(sample.n_cells_per_location or n_cells_per_location),
            "detection_alpha": float(sample.detection_alpha or detection_alpha),
        }
        for sample in samples
    }


def write_plan(samples: list[Sample], mode: str, n_cells_per_location: float | None, detection_alpha: float,
               outdir: str | os.PathLike) -> Path:
    """Write ``OUTDIR/mapping_plan.csv``: one row per sample (samplesheet order, grouped), columns
    :data:`PLAN_COLUMNS`. Checks everything before writing."""
    from tissuemap.outputs import staged_outputs

    groups = mapping_groups(samples, mode)
    settings = sample_settings(samples, n_cells_per_location, detection_alpha)
    with staged_outputs(outdir) as staging, (staging / PLAN_FILE).open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(PLAN_COLUMNS)
        for group, names in groups.items():
            for name in names:
                row = settings[name]
                writer.writerow([group, name, row["slide"], row["n_cells_per_location"], row["detection_alpha"]])
    return Path(outdir) / PLAN_FILE


def read_plan(path: str | os.PathLike) -> dict[str, dict]:
    """``mapping_plan.csv`` as sample -> {group, slide, n_cells_per_location, detection_alpha, order}, where
    ``order`` is the sample's row: the order a map step fits its samples in, whatever order it is given them."""
    path = Path(path)
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or set(PLAN_COLUMNS) - set(rows[0]):
        raise InputError(f"{path}: not a mapping plan (columns {', '.join(PLAN_COLUMNS)}); write it with tissuemap plan")
    return {
        row["sample"]: {"group": row["group"], "slide": row["slide"], "order": index,
                        "n_cells_per_location": float(row["n_cells_per_location"]),
                        "detection_alpha": float(row["detection_alpha"])}
        for index, row in enumerate(rows)
    }
