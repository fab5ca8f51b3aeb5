"""The local runner behind `tissuemap run`: every step of the pipeline on one machine.

It calls the same step commands, with the same options, that the Nextflow modules call, so both paths produce the
same files. Each step's command line is logged and recorded in ``pipeline_info/steps.json``, with its time, what it
read and what it wrote.

A rerun into the same folder reuses a finished step, as Nextflow's ``-resume`` does, when its command line is the
same, the external files it reads are unchanged (size and modification time), every file it wrote is still there
unchanged, and every step it depends on was reused too.
"""

from __future__ import annotations

import contextlib
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

from tissuemap import __version__
from tissuemap.errors import InputError
from tissuemap.log import logger
from tissuemap.outputs import prepare_outdir, staged_outputs
from tissuemap.samplesheet import Sample, read_samplesheet

# The libraries that shape a report's numbers; versions.json records every installed package.
KEY_PACKAGES = ("anndata", "scanpy", "numpy", "scipy", "pandas", "torch", "pyro-ppl", "matplotlib", "h5py")
MAPPING_MODES = ("per-sample", "joint", "slide")
REFERENCE_FOLDER = "reference"
INFO_FOLDER = "pipeline_info"
# Jointly mapped samples are written here first, then moved into each sample's folder. Hidden, so that no step
# (the summary's sample search, the output snapshots) mistakes it for results.
MAPPING_WORK_FOLDER = ".mapping"
STEPS_FILE = "steps.json"


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
    distribute
        Samples whose files (``NAME.*``) the command writes into one folder of ``MAPPING_WORK_FOLDER``; they are
        moved into each sample's own folder afterwards.
    """

    key: str
    label: str
    command: tuple[str, ...]
    args: tuple[str, ...]
    inputs: tuple[Path, ...] = ()
    needs: tuple[str, ...] = ()
    distribute: tuple[str, ...] = ()

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
    signatures: Path | None = None
    min_counts: int | None = None
    n_cells_per_location: float | None = None
    detection_alpha: float | None = None
    regression_epochs: int | None = None
    mapping_epochs: int | None = None
    mapping_mode: str = "per-sample"
    device: str | None = None
    seed: int | None = None


def _given(*pairs) -> list[str]:
    """Command-line options for the (option, value) pairs whose value is not ``None``."""
    return [str(part) for option, value in pairs if value is not None for part in (option, value)]


def mapping_groups(samples: list[Sample], mode: str) -> dict[str, list[str]]:
    """Samples fitted together, by group name: each alone (``per-sample``), all together (``joint``) or those
    sharing a ``slide`` value (``slide``; a sample without one is its own slide, as in the qc step)."""
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


def _n_cells_per_location(samples: list[Sample], default: float | None) -> dict[str, float]:
    """Each sample's expected cells per spot: its samplesheet value, else ``default`` (--n-cells-per-location).

    The map step needs the option even where every sample it fits has its own value (which takes precedence), so a
    sample's value stands in for the run's when that is not given.
    """
    missing = [sample.sample for sample in samples if sample.n_cells_per_location is None]
    if missing and default is None:
        raise InputError(
            f"--n-cells-per-location: sample(s) {', '.join(missing)} have no n_cells_per_location in the samplesheet; "
            "give the expected cells per spot (tissue dependent; the cell2location tutorial uses 30 for lymph node)"
        )
    return {sample.sample: default if default is not None else sample.n_cells_per_location for sample in samples}


def _qc_steps(samples: list[Sample], options: RunOptions, outdir: Path) -> list[Step]:
    """QC of every sample; the samplesheet's per-sample settings are stored by qc for the mapping."""
    steps = []
    for sample in samples:
        args = ["--sample", sample.sample, "--input", str(sample.path), "--outdir", str(outdir / sample.sample)]
        args += _given(
            ("--min-counts", options.min_counts),
            ("--n-cells-per-location", sample.n_cells_per_location),
            ("--detection-alpha", sample.detection_alpha),
            ("--slide", sample.slide),
        )
        steps.append(Step(f"qc/{sample.sample}", f"{sample.sample}: QC", ("qc",), tuple(args), inputs=(sample.path,)))
    return steps


def _reference_steps(options: RunOptions, reference_dir: Path) -> list[Step]:
    """Gene filtering and signatures of the reference, both into ``reference_dir``."""
    reference = Path(options.reference).resolve()
    return [
        Step("filter-genes", "reference: gene filter", ("filter-genes",),
             ("--reference", str(reference), "--labels-key", options.labels_key, "--outdir", str(reference_dir)),
             inputs=(reference,)),
        Step("signatures", "reference: signatures", ("signatures",),
             ("--reference", str(reference_dir / "reference.filtered.h5ad"), "--labels-key", options.labels_key,
              *_given(("--batch-key", options.batch_key), ("--covariate-keys", options.covariate_keys),
                      ("--max-epochs", options.regression_epochs), ("--device", options.device),
                      ("--seed", options.seed)),
              "--outdir", str(reference_dir)),
             needs=("filter-genes",)),
    ]


def _map_key(names: list[str]) -> str:
    """The key of the map step fitting the samples ``names``."""
    return f"map/{'+'.join(names)}"


def _mapping_steps(samples: list[Sample], groups: dict[str, list[str]], options: RunOptions, outdir: Path,
                   signatures: Path) -> list[Step]:
    """One map step per group of samples fitted together (:func:`mapping_groups`)."""
    learned = options.signatures is None
    n_cells_per_location = _n_cells_per_location(samples, options.n_cells_per_location)
    steps = []
    for group, names in groups.items():
        together = len(names) > 1
        steps.append(Step(
            _map_key(names),
            f"{group}: mapping ({len(names)} samples)" if together else f"{names[0]}: mapping",
            ("map",),
            ("--spatial", *(str(outdir / name / f"{name}.qc.h5ad") for name in names),
             "--signatures", str(signatures),
             "--n-cells-per-location", str(n_cells_per_location[names[0]]),
             *_given(("--detection-alpha", options.detection_alpha), ("--max-epochs", options.mapping_epochs),
                     ("--device", options.device), ("--seed", options.seed)),
             "--outdir", str(outdir / MAPPING_WORK_FOLDER / group if together else outdir / names[0])),
            inputs=() if learned else (signatures,),
            needs=(*(f"qc/{name}" for name in names), *(("signatures",) if learned else ())),
            distribute=tuple(names) if together else (),
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


def plan_steps(samplesheet: str | Path, options: RunOptions, outdir: str | Path) -> list[Step]:
    """The steps for a samplesheet, in run order; validates the samplesheet and the options first.

    QC of every sample; with a reference, gene filtering and signatures (skipped when ``options.signatures`` is
    given); mapping by group (:func:`mapping_groups`); the reference's report, every sample's report and the
    summary. Paths in the steps' command lines are absolute.
    """
    if (options.reference is None) == (options.signatures is None):
        raise InputError("give either --reference (with --labels-key) to learn signatures, or --signatures")
    if options.reference is not None and options.labels_key is None:
        raise InputError("--reference needs --labels-key: the obs column holding each cell's type")
    outdir = Path(outdir).resolve()
    samples = read_samplesheet(samplesheet)
    steps = _qc_steps(samples, options, outdir)
    reference_dir = None
    if options.signatures is None:
        reference_dir = outdir / REFERENCE_FOLDER
        steps += _reference_steps(options, reference_dir)
        signatures = reference_dir / "signatures.csv"
    else:
        signatures = Path(options.signatures).resolve()
    groups = mapping_groups(samples, options.mapping_mode)
    steps += _mapping_steps(samples, groups, options, outdir, signatures)
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


def _distribute(work_dir: Path, outdir: Path, samples: tuple[str, ...]) -> None:
    """Move each ``NAME.*`` file of ``work_dir`` into ``outdir/NAME/`` (all files or none), then remove it."""
    with staged_outputs(outdir) as staging:
        for path in sorted(work_dir.iterdir()):
            owners = [name for name in samples if path.name.startswith(f"{name}.")]
            if not owners:
                # the map step names every file after its sample (Nextflow's publishDir relies on it too)
                raise RuntimeError(f"{path}: the mapping step wrote a file of no sample among {', '.join(samples)}")
            # the longest matching name: sample 'a.b' owns 'a.b.qc.h5ad', not sample 'a'
            owner = max(owners, key=len)
            (staging / owner).mkdir(exist_ok=True)
            os.replace(path, staging / owner / path.name)


def _verbosity_options() -> list[str]:
    """The log level of this run, passed on to each step (whose command group sets it again)."""
    if logger.level >= logging.WARNING:
        return ["--quiet"]
    return ["--verbose"] if logger.level and logger.level <= logging.DEBUG else []


def _execute(step: Step, outdir: Path) -> None:
    from tissuemap.cli import main

    work_dir = None
    if step.distribute:
        work_dir = Path(step.args[step.args.index("--outdir") + 1])
        shutil.rmtree(work_dir, ignore_errors=True)  # what a killed run left behind
    try:
        main.main([*_verbosity_options(), *step.command, *step.args], prog_name="tissuemap", standalone_mode=False)
        if work_dir is not None:
            _distribute(work_dir, outdir, step.distribute)
    finally:
        if work_dir is not None:
            shutil.rmtree(work_dir, ignore_errors=True)
            with contextlib.suppress(OSError):  # other groups' folders may still be there
                work_dir.parent.rmdir()


def run_steps(steps: list[Step], outdir: str | Path, parameters: dict, force: bool = False) -> list[dict]:
    """Run ``steps`` in order through the command line, reusing the finished ones (unless ``force``).

    Records each step in ``pipeline_info/steps.json`` as soon as it finishes (so that a failed run keeps what it
    finished), and writes ``pipeline_info/params.json`` (``parameters``) and ``versions.json`` (every installed
    package). Returns the steps' records.
    """
    from tqdm.contrib.logging import logging_redirect_tqdm

    from tissuemap.progress import Progress

    outdir = prepare_outdir(Path(outdir).resolve())
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
            _execute(step, outdir)
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
