"""The options of `tissuemap run` that shape its steps, and how they reach each step's command line.

:data:`PASSED_OPTIONS` is the one table of which run option sets which step option: the steps' command lines are
built from it (:func:`passed_options`), and a step's error message is translated back with it
(:func:`translate_message`), so that the message names the option the user of `tissuemap run` can give.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from tissuemap.plan import DEFAULT_MAPPING_MODE


@dataclass(frozen=True)
class RunOptions:
    """The options of `tissuemap run` that shape its steps; ``None`` leaves a step's own default."""

    reference: Path | None = None
    labels_key: str | None = None
    batch_key: str | None = None
    covariate_keys: str | None = None
    layer: str | None = None
    signatures: Path | None = None
    min_counts: int | None = None
    cell_count_cutoff: int | None = None
    cell_percentage_cutoff2: float | None = None
    nonz_mean_cutoff: float | None = None
    method: str | None = None
    min_cells_per_type: int | None = None
    regression_epochs: int | None = None
    regression_lr: float | None = None
    regression_batch_size: int | None = None
    n_cells_per_location: float | None = None
    detection_alpha: float | None = None
    mapping_epochs: int | None = None
    batch_size: int | str | None = None
    early_stopping: bool = False
    early_stopping_tolerance: float | None = None
    early_stopping_window: int | None = None
    lr: float | None = None
    min_shared_genes: int | None = None
    spatialdata: bool = False
    mapping_mode: str = DEFAULT_MAPPING_MODE
    device: str | None = None
    seed: int | None = None
    threads: int | None = None


# Every step option that `tissuemap run` passes on, by step command: step option -> the RunOptions field (and so the
# run option, "--" + the field's name with dashes) that sets it. The steps' command lines are built from this table,
# and the steps' error messages are translated with it, so that a message names the option the user can give.
PASSED_OPTIONS: dict[str, dict[str, str]] = {
    "plan": {
        "--mapping-mode": "mapping_mode", "--n-cells-per-location": "n_cells_per_location",
        "--detection-alpha": "detection_alpha", "--reference": "reference", "--labels-key": "labels_key",
        "--signatures": "signatures",
    },
    "qc": {"--min-counts": "min_counts"},
    "filter-genes": {
        "--layer": "layer", "--cell-count-cutoff": "cell_count_cutoff",
        "--cell-percentage-cutoff2": "cell_percentage_cutoff2", "--nonz-mean-cutoff": "nonz_mean_cutoff",
    },
    "signatures": {
        "--batch-key": "batch_key", "--covariate-keys": "covariate_keys", "--method": "method",
        "--min-cells-per-type": "min_cells_per_type", "--max-epochs": "regression_epochs", "--lr": "regression_lr",
        "--batch-size": "regression_batch_size", "--device": "device", "--seed": "seed", "--threads": "threads",
    },
    "map": {
        "--max-epochs": "mapping_epochs", "--batch-size": "batch_size", "--lr": "lr",
        "--min-shared-genes": "min_shared_genes", "--device": "device", "--seed": "seed", "--threads": "threads",
        "--early-stopping": "early_stopping",
        "--early-stopping-tolerance": "early_stopping_tolerance", "--early-stopping-window": "early_stopping_window",
        "--spatialdata": "spatialdata",
    },
}


def run_option(field: str) -> str:
    """The `tissuemap run` option of a :class:`RunOptions` field: ``mapping_epochs`` -> ``--mapping-epochs``."""
    return "--" + field.replace("_", "-")


def passed_options(command: str, options: RunOptions) -> list[str]:
    """The options of step ``command`` that the run sets (:data:`PASSED_OPTIONS`), those not ``None``; a flag
    (a boolean field) when it is ``True``."""
    passed = []
    for option, field in PASSED_OPTIONS[command].items():
        value = getattr(options, field)
        if isinstance(value, bool):
            passed += [option] if value else []
        elif value is not None:
            passed += [option, str(value)]
    return passed


def translate_message(message: str, command: tuple[str, ...]) -> str:
    """``message`` of step ``command`` with each step option it names replaced by the run option that sets it."""
    renamed = {option: run_option(field) for option, field in PASSED_OPTIONS.get(command[0], {}).items()}
    pattern = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)(?![\w-])")
    return pattern.sub(lambda match: renamed.get(match.group(1), match.group(1)), message)
