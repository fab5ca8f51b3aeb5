"""The steps of `tissuemap run` for a samplesheet, planned before any runs: every step's command line, the files
from outside the run it reads, and the steps whose outputs it reads (:func:`plan_steps`); and the check of every
input before the first step (:func:`check_inputs`)."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from tissuemap.defaults import SIGNATURES_MIN_CELLS_PER_TYPE
from tissuemap.log import counted, logger
from tissuemap.plan import PLAN_FILE, check_cells_per_location, check_signature_source, mapping_groups
from tissuemap.runner.options import RunOptions, passed_options
from tissuemap.samplesheet import Sample, read_samplesheet

REFERENCE_FOLDER = "reference"
INFO_FOLDER = "pipeline_info"
# A training step's checkpoint, one folder per step, outside the folders its outputs go to; hidden, so that no
# step mistakes it for results.
CHECKPOINT_FOLDER = ".checkpoints"


@dataclass(frozen=True)
class Step:
    """One step command of a run.

    Attributes
    ----------
    key
        Unique id within a run (``qc/NAME``, ``map/NAME+NAME``...): how a rerun finds the step's record.
    label
        What the progress bar and the log show.
    command
        The sub-command's words, e.g. ``("report", "sample")``.
    args
        Its options.
    inputs
        Files or folders from outside the run that the step reads: a change in them means rerunning it.
    needs
        Keys of the steps whose outputs it reads: when one of them runs again, so does this step.
    """

    key: str
    label: str
    command: tuple[str, ...]
    args: tuple[str, ...]
    inputs: tuple[Path, ...] = ()
    needs: tuple[str, ...] = ()

    def command_line(self) -> str:
        """The step as one shell command line."""
        return shlex.join(["tissuemap", *self.command, *self.args])


def _plan_step(samplesheet: Path, options: RunOptions, outdir: Path) -> Step:
    """`tissuemap plan`: the mapping plan every map step reads, as in the Nextflow pipeline."""
    args = ("--input", str(samplesheet), *passed_options("plan", options), "--outdir", str(outdir / INFO_FOLDER))
    return Step("plan", "mapping plan", ("plan",), args, inputs=(samplesheet,))


def _qc_steps(samples: list[Sample], options: RunOptions, outdir: Path) -> list[Step]:
    """QC of every sample."""
    steps = []
    for sample in samples:
        args = ["--sample", sample.sample, "--input", str(sample.path), "--outdir", str(outdir / sample.sample)]
        args += [*passed_options("qc", options), *sample.qc_options()]
        steps.append(Step(f"qc/{sample.sample}", f"{sample.sample}: QC", ("qc",), tuple(args), inputs=(sample.path,)))
    return steps


def _checkpoint_args(outdir: Path, key: str) -> tuple[str, ...]:
    """A training step's checkpoint folder (``CHECKPOINT_FOLDER``, by step key) and ``--resume``: its checkpoint of
    an interrupted attempt is continued from (:func:`~tissuemap.runner.execution.checkpoint_folder` removes one
    the rerun must not use)."""
    return "--checkpoint-dir", str(outdir / CHECKPOINT_FOLDER / key.replace("/", "-")), "--resume"


def _reference_steps(options: RunOptions, outdir: Path, reference_dir: Path) -> list[Step]:
    """Gene filtering and signatures of the reference, both into ``reference_dir``."""
    reference = Path(options.reference).resolve()
    return [
        Step("filter-genes", "reference: gene filter", ("filter-genes",),
             ("--reference", str(reference), "--labels-key", options.labels_key, *passed_options("filter-genes", options),
              "--outdir", str(reference_dir)),
             inputs=(reference,)),
        # the filtered reference holds the raw counts in X, whichever layer they came from
        Step("signatures", "reference: signatures", ("signatures",),
             ("--reference", str(reference_dir / "reference.filtered.h5ad"), "--labels-key", options.labels_key,
              *passed_options("signatures", options), *_checkpoint_args(outdir, "signatures"),
              "--outdir", str(reference_dir)),
             needs=("filter-genes",)),
    ]


def _map_key(names: list[str]) -> str:
    """The key of the map step fitting the samples ``names``."""
    return f"map/{'+'.join(names)}"


def _mapping_steps(groups: dict[str, list[str]], options: RunOptions, outdir: Path, signatures: Path,
                   cell_counts: dict[str, Path]) -> list[Step]:
    """One map step per group of samples fitted together (:func:`tissuemap.plan.mapping_groups`); each writes its
    samples' files into their folders ``outdir/NAME/`` and reads their settings from the mapping plan, and the cell
    counts files of those that have one (samplesheet column ``cell_counts``) as ``--cell-counts NAME=FILE``."""
    learned = options.signatures is None
    steps = []
    for group, names in groups.items():
        counted_names = [name for name in names if name in cell_counts]
        counts_args = [part for name in counted_names for part in ("--cell-counts", f"{name}={cell_counts[name]}")]
        steps.append(Step(
            _map_key(names),
            f"{group}: mapping ({len(names)} samples)" if len(names) > 1 else f"{names[0]}: mapping",
            ("map",),
            ("--spatial", *(str(outdir / name / f"{name}.qc.h5ad") for name in names),
             "--signatures", str(signatures),
             "--plan", str(outdir / INFO_FOLDER / PLAN_FILE),
             *counts_args,
             *passed_options("map", options),
             *_checkpoint_args(outdir, _map_key(names)),
             "--outdir", str(outdir)),
            inputs=(*(() if learned else (signatures,)), *(cell_counts[name] for name in counted_names)),
            needs=("plan", *(f"qc/{name}" for name in names), *(("signatures",) if learned else ())),
        ))
    return steps


def _report_steps(samples: list[Sample], groups: dict[str, list[str]], outdir: Path,
                  reference_dir: Path | None) -> list[Step]:
    """The reference's report (when the run learns the signatures), every sample's report and the summary."""
    map_step_of = {name: _map_key(names) for names in groups.values() for name in names}
    steps = []
    if reference_dir is not None:
        steps.append(Step("report/reference", "reference: report", ("report", "reference"),
                          ("--input-dir", str(reference_dir), "--outdir", str(reference_dir)),
                          needs=("filter-genes", "signatures")))
    for sample in samples:
        folder = str(outdir / sample.sample)
        steps.append(Step(f"report/{sample.sample}", f"{sample.sample}: report", ("report", "sample"),
                          ("--sample", sample.sample, "--input-dir", folder, "--outdir", folder),
                          needs=(f"qc/{sample.sample}", map_step_of[sample.sample])))
    steps.append(Step("summary", "summary", ("report", "summary"),
                      ("--input-dir", str(outdir), "--outdir", str(outdir),
                       "--samples", ",".join(sample.sample for sample in samples)),
                      needs=(*(f"qc/{sample.sample}" for sample in samples),
                             *(_map_key(names) for names in groups.values()))))
    return steps


def check_inputs(samples: list[Sample], options: RunOptions) -> None:
    """Raise :class:`InputError` for the first input a step would fail on, before any step runs: each sample's
    folder or file, the reference (its obs columns, var names, and raw counts in the first cells of X or the
    ``--layer``), and the signatures table. The steps' own checks, made on what can be read in a moment."""
    from tissuemap.io.spatial import check_spatial_input

    if options.spatialdata:
        from tissuemap.io.spatialdata_export import require_spatialdata

        require_spatialdata()
    for sample in samples:
        check_spatial_input(sample.path, sample.bin_size)
        if sample.cell_counts is not None:
            from tissuemap.cell_counts import read_cell_counts

            read_cell_counts(sample.cell_counts)
    if options.reference is not None:
        from tissuemap.reference import check_reference

        covariate_keys = [key.strip() for key in (options.covariate_keys or "").split(",") if key.strip()]
        check_reference(options.reference, options.labels_key, options.batch_key, covariate_keys, options.layer,
                        options.min_cells_per_type or SIGNATURES_MIN_CELLS_PER_TYPE)
    if options.signatures is not None:
        from tissuemap.mapping import read_signatures

        read_signatures(options.signatures)
    logger.info("inputs checked: %s and the %s", counted(len(samples), "sample"),
                "reference" if options.reference is not None else "signatures")


def plan_steps(samplesheet: str | Path, options: RunOptions, outdir: str | Path,
               check_files: bool = False) -> list[Step]:
    """The steps for a samplesheet, in run order; validates the samplesheet and the options first, and with
    ``check_files`` every input file too (:func:`check_inputs`).

    The mapping plan (`tissuemap plan`); QC of every sample; with a reference, gene filtering and signatures (skipped
    when ``options.signatures`` is given); mapping by group (:func:`tissuemap.plan.mapping_groups`); the reference's
    report, every sample's report and the summary. Paths in the steps' command lines are absolute.
    """
    check_signature_source(options.reference, options.labels_key, options.signatures)
    outdir = Path(outdir).resolve()
    samples = read_samplesheet(samplesheet)
    if check_files:
        check_inputs(samples, options)
    groups = mapping_groups(samples, options.mapping_mode)
    check_cells_per_location(samples, options.n_cells_per_location)
    steps = [_plan_step(Path(samplesheet).resolve(), options, outdir), *_qc_steps(samples, options, outdir)]
    reference_dir = None
    if options.signatures is None:
        reference_dir = outdir / REFERENCE_FOLDER
        steps += _reference_steps(options, outdir, reference_dir)
        signatures = reference_dir / "signatures.csv"
    else:
        signatures = Path(options.signatures).resolve()
    cell_counts = {sample.sample: sample.cell_counts for sample in samples if sample.cell_counts is not None}
    steps += _mapping_steps(groups, options, outdir, signatures, cell_counts)
    return steps + _report_steps(samples, groups, outdir, reference_dir)
