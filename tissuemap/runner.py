"""The local runner behind `tissuemap run`: every step of the pipeline on one machine.

It calls the same step commands, with the same options, that the Nextflow modules call, so both paths produce the
same files. Each step's command line is logged and recorded in ``pipeline_info/steps.json``, with its time, what it
read and what it wrote.

A rerun into the same folder reuses a finished step, as Nextflow's ``-resume`` does, when its command line is the
same, the external files it reads are unchanged (size and modification time), every file it wrote is still there
unchanged, and every step it depends on was reused too. A training step stopped by SIGTERM or SIGINT (exit 75) keeps
its checkpoint in ``.checkpoints/`` and continues from it on a rerun under the same rule (same command line and
inputs, every step it depends on reused); ``--force`` starts it over.

One run at a time writes into a folder: a run holds a lock on ``.tissuemap-run.lock`` (``flock``, released by the
system when the process ends, however it ends).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shlex
import shutil
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Iterator

from tissuemap import __version__
from tissuemap.defaults import SIGNATURES_MIN_CELLS_PER_TYPE
from tissuemap.errors import InputError
from tissuemap.interruption import TrainingInterrupted
from tissuemap.log import counted, logger
from tissuemap.outputs import complete_interrupted_publications, prepare_outdir, staged_outputs
from tissuemap.plan import PLAN_FILE, check_cells_per_location, check_signature_source, mapping_groups
from tissuemap.samplesheet import Sample, read_samplesheet

# The libraries that shape a report's numbers; versions.json records every installed package.
KEY_PACKAGES = ("anndata", "scanpy", "numpy", "scipy", "pandas", "torch", "pyro-ppl", "matplotlib", "h5py")
REFERENCE_FOLDER = "reference"
INFO_FOLDER = "pipeline_info"
STEPS_FILE = "steps.json"
# A training step's checkpoint, one folder per step, outside the folders its outputs go to; hidden, so that no
# step mistakes it for results.
CHECKPOINT_FOLDER = ".checkpoints"
# beside a checkpoint: the command line and inputs of the step that wrote it (the reuse rule decides on resuming)
CHECKPOINT_STAMP = "step.json"
LOCK_FILE = ".tissuemap-run.lock"


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
    early_stopping: bool = False
    early_stopping_tolerance: float | None = None
    early_stopping_window: int | None = None
    lr: float | None = None
    min_shared_genes: int | None = None
    spatialdata: bool = False
    mapping_mode: str = "per-sample"
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
        "--max-epochs": "mapping_epochs", "--lr": "lr", "--min-shared-genes": "min_shared_genes", "--device": "device",
        "--seed": "seed", "--threads": "threads", "--early-stopping": "early_stopping",
        "--early-stopping-tolerance": "early_stopping_tolerance", "--early-stopping-window": "early_stopping_window",
        "--spatialdata": "spatialdata",
    },
}


def run_option(field: str) -> str:
    """The `tissuemap run` option of a :class:`RunOptions` field: ``mapping_epochs`` -> ``--mapping-epochs``."""
    return "--" + field.replace("_", "-")


def _passed(command: str, options: RunOptions) -> list[str]:
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



def _plan_step(samplesheet: Path, options: RunOptions, outdir: Path) -> Step:
    """`tissuemap plan`: the mapping plan every map step reads, as in the Nextflow pipeline."""
    args = ("--input", str(samplesheet), *_passed("plan", options), "--outdir", str(outdir / INFO_FOLDER))
    return Step("plan", "mapping plan", ("plan",), args, inputs=(samplesheet,))


def _qc_steps(samples: list[Sample], options: RunOptions, outdir: Path) -> list[Step]:
    """QC of every sample."""
    steps = []
    for sample in samples:
        args = ["--sample", sample.sample, "--input", str(sample.path), "--outdir", str(outdir / sample.sample)]
        args += [*_passed("qc", options), *sample.qc_options()]
        steps.append(Step(f"qc/{sample.sample}", f"{sample.sample}: QC", ("qc",), tuple(args), inputs=(sample.path,)))
    return steps


def _checkpoint_args(outdir: Path, key: str) -> tuple[str, ...]:
    """A training step's checkpoint folder (``CHECKPOINT_FOLDER``, by step key) and ``--resume``: its checkpoint of
    an interrupted attempt is continued from (:func:`_checkpoint_folder` removes one the rerun must not use)."""
    return "--checkpoint-dir", str(outdir / CHECKPOINT_FOLDER / key.replace("/", "-")), "--resume"


def _reference_steps(options: RunOptions, outdir: Path, reference_dir: Path) -> list[Step]:
    """Gene filtering and signatures of the reference, both into ``reference_dir``."""
    reference = Path(options.reference).resolve()
    return [
        Step("filter-genes", "reference: gene filter", ("filter-genes",),
             ("--reference", str(reference), "--labels-key", options.labels_key, *_passed("filter-genes", options),
              "--outdir", str(reference_dir)),
             inputs=(reference,)),
        # the filtered reference holds the raw counts in X, whichever layer they came from
        Step("signatures", "reference: signatures", ("signatures",),
             ("--reference", str(reference_dir / "reference.filtered.h5ad"), "--labels-key", options.labels_key,
              *_passed("signatures", options), *_checkpoint_args(outdir, "signatures"),
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
             *_passed("map", options),
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


def package_versions(every: bool = False) -> dict[str, str]:
    """Versions of Python, tissuemap and the libraries that shape its numbers (``every``: of every installed
    package)."""
    versions = {"python": sys.version.split()[0], "tissuemap": __version__}
    if every:
        # names normalised as pip compares them (PEP 503): "Jinja2" -> "jinja2", "pyro_ppl" -> "pyro-ppl"
        installed = {re.sub(r"[-_.]+", "-", dist.metadata["Name"]).lower(): dist.version
                     for dist in metadata.distributions() if dist.metadata["Name"]}
        return {**versions, **dict(sorted(installed.items()))}
    for name in KEY_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _fingerprint(path: Path) -> str:
    """Size and modification time of a file, or of every file in a folder, as a short hash ("missing" if absent)."""
    if path.is_file():
        stats = [("", path.stat().st_size, path.stat().st_mtime_ns)]
    elif path.is_dir():
        stats = sorted((str(item.relative_to(path)), item.stat().st_size, item.stat().st_mtime_ns)
                       for item in path.rglob("*") if item.is_file())
    else:
        return "missing"
    return hashlib.sha256(json.dumps(stats).encode()).hexdigest()[:16]


def _snapshot(outdir: Path) -> dict[str, list[int]]:
    """Every result file under ``outdir`` -> [size, mtime_ns], skipping hidden folders and pipeline_info."""
    files = {}
    for folder, subfolders, names in os.walk(outdir):
        subfolders[:] = [name for name in subfolders if not name.startswith(".") and name != INFO_FOLDER]
        for name in names:
            path = Path(folder) / name
            stat = path.stat()
            files[str(path.relative_to(outdir))] = [stat.st_size, stat.st_mtime_ns]
    return files


def _outputs_unchanged(outdir: Path, outputs: dict[str, list[int]]) -> bool:
    for name, stat in outputs.items():
        path = outdir / name
        if not path.is_file() or [path.stat().st_size, path.stat().st_mtime_ns] != stat:
            return False
    return True


def _read_records(info_dir: Path) -> dict[str, dict]:
    path = info_dir / STEPS_FILE
    if not path.is_file():
        return {}
    try:
        return {record["key"]: record for record in json.loads(path.read_text())}
    except (json.JSONDecodeError, KeyError, TypeError):
        logger.warning("%s is unreadable: every step runs again", path)
        return {}


def _write_json(folder: Path, name: str, content) -> None:
    with staged_outputs(folder) as staging:
        (staging / name).write_text(json.dumps(content, indent=2, default=str) + "\n")


def _verbosity_options() -> list[str]:
    """The log level of this run, passed on to each step (whose command group sets it again)."""
    if logger.level >= logging.WARNING:
        return ["--quiet"]
    return ["--verbose"] if logger.level and logger.level <= logging.DEBUG else []


def _execute(step: Step) -> None:
    import click

    from tissuemap.cli import main

    try:
        main.main([*_verbosity_options(), *step.command, *step.args], prog_name="tissuemap", standalone_mode=False)
    except click.ClickException as err:  # the step's one-line error, naming the run's options
        err.message = translate_message(err.message, step.command)
        raise


@contextlib.contextmanager
def exclusive_use(outdir: Path) -> Iterator[None]:
    """Hold the run lock of ``outdir`` inside the block (``LOCK_FILE``, holding the process id, removed at the end).

    Raises
    ------
    InputError
        If a live process holds it.
    """
    path = outdir / LOCK_FILE
    while True:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(descriptor, 32).decode(errors="replace").strip() or "?"
            os.close(descriptor)
            raise InputError(f"{outdir}: another tissuemap run (process {holder}) is writing to this folder; wait for "
                             "it to end or choose another --outdir") from None
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path).st_ino == os.fstat(descriptor).st_ino:
                break
        os.close(descriptor)  # a run that just ended removed the file this one locked: lock the new one
    os.ftruncate(descriptor, 0)
    os.write(descriptor, f"{os.getpid()}\n".encode())
    try:
        yield
    finally:
        path.unlink(missing_ok=True)  # while still locked: no other run can hold the removed file's lock
        os.close(descriptor)


@contextlib.contextmanager
def _checkpoint_folder(step: Step, inputs: dict, fresh: str | None) -> Iterator[None]:
    """Prepare the checkpoint folder of a training step (none for other steps), and remove it unless it holds a
    checkpoint when the step ends (it finished, or failed before saving one).

    A checkpoint there is continued from (the step's ``--resume``) only when it was written by the same command line
    with the same inputs; ``fresh`` (why the step starts over: ``--force``, an earlier step ran again) removes it.
    """
    if "--checkpoint-dir" not in step.args:
        yield
        return
    folder = Path(step.args[step.args.index("--checkpoint-dir") + 1])
    stamp = {"command": step.command_line(), "inputs": inputs}
    if any(folder.glob("*.ckpt.pt")):
        try:
            same = json.loads((folder / CHECKPOINT_STAMP).read_text()) == stamp
        except (OSError, json.JSONDecodeError):
            same = False
        if fresh is None and same:
            logger.info("step %s: continuing from the checkpoint of its interrupted run", step.label)
        else:
            logger.info("step %s: starting over, not from its checkpoint (%s)", step.label,
                        fresh or "its command line or inputs changed")
            shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CHECKPOINT_STAMP).write_text(json.dumps(stamp) + "\n")
    try:
        yield
    finally:
        if not any(folder.glob("*.ckpt.pt")):
            shutil.rmtree(folder, ignore_errors=True)
            with contextlib.suppress(OSError):  # other steps' checkpoints may still be there
                folder.parent.rmdir()


def run_steps(steps: list[Step], outdir: str | Path, parameters: dict, force: bool = False) -> list[dict]:
    """Run ``steps`` in order through the command line, reusing the finished ones (unless ``force``).

    Records each step in ``pipeline_info/steps.json`` as soon as it finishes (so that a failed run keeps what it
    finished), and writes ``pipeline_info/params.json`` (``parameters``) and ``versions.json`` (every installed
    package). Returns the steps' records. Holds ``outdir``'s run lock (:func:`exclusive_use`) throughout, and first
    finishes the publications that killed runs left (:func:`~tissuemap.outputs.complete_interrupted_publications`).

    Raises
    ------
    TrainingInterrupted
        If a training step was stopped by a signal: a rerun continues from its checkpoint.
    """
    outdir = prepare_outdir(Path(outdir).resolve())
    with exclusive_use(outdir):
        for folder in sorted(outdir.iterdir()):
            if folder.is_dir() and not folder.name.startswith("."):
                complete_interrupted_publications(folder)
        return _run_locked(steps, outdir, parameters, force)


def _run_locked(steps: list[Step], outdir: Path, parameters: dict, force: bool) -> list[dict]:
    from tqdm.contrib.logging import logging_redirect_tqdm

    from tissuemap.progress import Progress

    info_dir = outdir / INFO_FOLDER
    _write_json(info_dir, "params.json", parameters)
    _write_json(info_dir, "versions.json", package_versions(every=True))
    previous = {} if force else _read_records(info_dir)
    records = dict(previous)
    reused: set[str] = set()
    # log lines through tqdm: printed above the progress bar on a terminal, plain lines otherwise
    with logging_redirect_tqdm(loggers=[logger]), Progress(len(steps), "tissuemap run", "step") as progress:
        for done, step in enumerate(steps):
            progress.update(done, f"next: {step.label}")
            inputs = {str(path): _fingerprint(path) for path in step.inputs}
            record = previous.get(step.key)
            if (
                record is not None
                and record["command"] == step.command_line()
                and record.get("inputs") == inputs
                and all(need in reused for need in step.needs)
                and _outputs_unchanged(outdir, record["outputs"])
            ):
                logger.info("step %s: reused (same command and inputs, its %d outputs unchanged)",
                            step.label, len(record["outputs"]))
                reused.add(step.key)
                records[step.key] = {**record, "status": "reused"}
                continue
            logger.info("step %s: %s", step.label, step.command_line())
            before = _snapshot(outdir)
            started = time.perf_counter()
            again = next((need for need in step.needs if need not in reused), None)
            fresh = "--force" if force else f"step {again} ran again" if again else None
            try:
                with _checkpoint_folder(step, inputs, fresh):
                    _execute(step)
            except TrainingInterrupted as err:
                raise TrainingInterrupted(f"step {step.label}: {err.message}; `tissuemap run --force` starts over "
                                          "instead") from None
            seconds = time.perf_counter() - started
            outputs = {name: stat for name, stat in _snapshot(outdir).items() if before.get(name) != stat}
            records[step.key] = {"key": step.key, "step": step.label, "command": step.command_line(),
                                 "seconds": round(seconds, 3), "status": "ran", "inputs": inputs, "outputs": outputs}
            _write_json(info_dir, STEPS_FILE, [records[s.key] for s in steps if s.key in records])
        progress.update(len(steps), "finished")
    finished = [records[step.key] for step in steps]
    _write_json(info_dir, STEPS_FILE, finished)
    ran = [record for record in finished if record["status"] == "ran"]
    logger.info("done: %d steps run in %.1f s, %d reused; results in %s", len(ran),
                sum(record["seconds"] for record in ran), len(finished) - len(ran), outdir)
    return finished
