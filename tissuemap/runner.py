"""The local runner behind `tissuemap run`: every step of the pipeline on one machine.

It calls the same step commands, with the same options, that the Nextflow modules call, so both paths produce the
same files. Each step's command line is logged and recorded in ``pipeline_info/``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from tissuemap import __version__
from tissuemap.log import logger
from tissuemap.outputs import prepare_outdir, staged_outputs
from tissuemap.samplesheet import read_samplesheet

RECORDED_PACKAGES = ("anndata", "scanpy", "numpy", "scipy", "pandas", "torch", "pyro-ppl", "matplotlib", "h5py")


@dataclass(frozen=True)
class Step:
    """One step command to run: the sub-command name and its arguments."""

    label: str
    command: str
    args: tuple[str, ...]

    def command_line(self) -> str:
        return " ".join(["tissuemap", self.command, *self.args])


def plan_steps(
    samplesheet: str | Path,
    reference: str | Path,
    labels_key: str,
    outdir: str | Path,
    min_counts: int | None = None,
) -> list[Step]:
    """The steps for a samplesheet and a reference, in run order; validates the samplesheet first."""
    outdir = Path(outdir)
    steps = [
        Step(
            "reference: filter genes",
            "filter-genes",
            ("--reference", str(reference), "--labels-key", labels_key, "--outdir", str(outdir / "reference")),
        )
    ]
    for sample in read_samplesheet(samplesheet):
        args = ["--sample", sample.sample, "--input", str(sample.path), "--outdir", str(outdir / sample.sample)]
        if min_counts is not None:
            args += ["--min-counts", str(min_counts)]
        for option, value in (
            ("--n-cells-per-location", sample.n_cells_per_location),
            ("--detection-alpha", sample.detection_alpha),
            ("--slide", sample.slide),
        ):
            if value is not None:
                args += [option, str(value)]
        steps.append(Step(f"{sample.sample}: QC", "qc", tuple(args)))
    return steps


def package_versions() -> dict[str, str]:
    """Versions of tissuemap and the libraries that shape its numbers."""
    versions = {"tissuemap": __version__}
    for name in RECORDED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def run_steps(steps: list[Step], outdir: str | Path, parameters: dict) -> None:
    """Run ``steps`` in order through the CLI, then record parameters, versions and step times in pipeline_info/."""
    from tqdm.auto import tqdm

    from tissuemap.cli import main

    outdir = prepare_outdir(outdir)
    timings = []
    for step in tqdm(steps, desc="tissuemap run", unit="step"):
        logger.info("step %s: %s", step.label, step.command_line())
        started = time.perf_counter()
        main.main([step.command, *step.args], prog_name="tissuemap", standalone_mode=False)
        timings.append({"step": step.label, "command": step.command_line(), "seconds": round(time.perf_counter() - started, 3)})
    with staged_outputs(outdir / "pipeline_info") as staging:
        (staging / "params.json").write_text(json.dumps(parameters, indent=2, default=str) + "\n")
        (staging / "versions.json").write_text(json.dumps(package_versions(), indent=2) + "\n")
        (staging / "steps.json").write_text(json.dumps(timings, indent=2) + "\n")
    logger.info("done: %d steps in %.1f s; results in %s", len(steps), sum(t["seconds"] for t in timings), outdir)
