"""Running the planned steps of `tissuemap run`, each through the command line, with reuse on a rerun.

A rerun into the same folder reuses a finished step, as Nextflow's ``-resume`` does, when its command line is the
same, the external files it reads are unchanged (size and modification time), every file it wrote is still there
unchanged, and every step it depends on was reused too. A training step stopped by SIGTERM or SIGINT (exit 75) keeps
its checkpoint in ``.checkpoints/`` and continues from it on a rerun under the same rule (same command line and
inputs, every step it depends on reused); ``--force`` starts it over.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Iterator

import click

from tissuemap.interruption import TrainingInterrupted
from tissuemap.log import logger
from tissuemap.outputs import complete_interrupted_publications, prepare_outdir, staged_outputs
from tissuemap.runner.lock import exclusive_use
from tissuemap.runner.options import translate_message
from tissuemap.runner.steps import INFO_FOLDER, Step
from tissuemap.versions import package_versions

STEPS_FILE = "steps.json"
# beside a checkpoint: the command line and inputs of the step that wrote it (the reuse rule decides on resuming)
CHECKPOINT_STAMP = "step.json"


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


def _execute(step: Step, commands: click.Group) -> None:
    try:
        commands.main([*_verbosity_options(), *step.command, *step.args], prog_name="tissuemap",
                      standalone_mode=False)
    except click.ClickException as err:  # the step's one-line error, naming the run's options
        err.message = translate_message(err.message, step.command)
        raise


@contextlib.contextmanager
def checkpoint_folder(step: Step, inputs: dict, fresh: str | None) -> Iterator[None]:
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


def run_steps(steps: list[Step], commands: click.Group, outdir: str | Path, parameters: dict,
              force: bool = False) -> list[dict]:
    """Run ``steps`` in order through the command line ``commands`` (the ``tissuemap`` group,
    :data:`tissuemap.cli.main`, which the caller above the runner hands down), reusing the finished ones (unless
    ``force``).

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
        return _run_locked(steps, commands, outdir, parameters, force)


def _run_locked(steps: list[Step], commands: click.Group, outdir: Path, parameters: dict,
                force: bool) -> list[dict]:
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
                with checkpoint_folder(step, inputs, fresh):
                    _execute(step, commands)
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
