"""Options shared by several step commands."""

from __future__ import annotations

from pathlib import Path

import click

from tissuemap.interruption import EXIT_INTERRUPTED


class BatchSize(click.ParamType):
    """``--batch-size``: a whole number of spots (at least 1), or ``auto`` (the memory plan chooses)."""

    name = "N|auto"

    def convert(self, value, param, ctx):
        if value is None or value == "auto" or isinstance(value, int):
            return value
        try:
            number = int(value)
        except ValueError:
            number = 0
        if number < 1:
            self.fail(f"{value!r} is neither a whole number of spots (at least 1) nor auto", param, ctx)
        return number


BATCH_SIZE = BatchSize()


def checkpoint_options(default_every: int, unit: str, checkpoint_name: str):
    """``--checkpoint-every``, ``--checkpoint-dir`` and ``--resume`` for a training step that saves its state every
    so many ``unit`` (and at SIGTERM or SIGINT, after which it exits with ``EXIT_INTERRUPTED``)."""

    def decorate(command):
        command = click.option(
            "--resume", is_flag=True,
            help="Continue an interrupted run from its checkpoint (same inputs and options; a fresh start when there "
            "is none). CPU results equal those of an uninterrupted run bit for bit.",
        )(command)
        command = click.option(
            "--checkpoint-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
            show_default="--outdir",
            help="Folder of the checkpoint, e.g. one that outlives a cluster task's work folder.",
        )(command)
        return click.option(
            "--checkpoint-every", default=default_every, show_default=True, type=click.IntRange(min=0),
            help=f"Save the training state to CHECKPOINT_DIR/{checkpoint_name} every this many {unit} (0: only when "
            f"stopped by SIGTERM or SIGINT, which exits with {EXIT_INTERRUPTED}); it is deleted once the outputs are "
            "written.",
        )(command)

    return decorate


def threads_option(command):
    """``--threads``: torch's CPU threads (and those of the numerical libraries) for a training step."""
    from tissuemap.threads import default_threads

    return click.option(
        "--threads", type=click.IntRange(min=1), default=default_threads(), show_default=True,
        help="CPU threads for training; the default is the CPUs this process may use (affinity, cgroup quota), or "
        "OMP_NUM_THREADS if lower. More threads than free cores make every step wait for the slowest.",
    )(command)


def layer_option(command):
    """``--layer``: where the reference's raw counts are."""
    return click.option(
        "--layer", default=None, show_default="X",
        help="Layer of the reference holding the raw counts; 'raw' reads .raw (its X and var_names).",
    )(command)


def early_stopping_options(command):
    """``--early-stopping`` with its ``--early-stopping-tolerance`` and ``--early-stopping-window``
    (:mod:`tissuemap.early_stopping`)."""
    from tissuemap.early_stopping import EARLY_STOPPING_TOLERANCE, EARLY_STOPPING_WINDOW

    command = click.option(
        "--early-stopping-window", type=click.IntRange(min=1), default=EARLY_STOPPING_WINDOW, show_default=True,
        help="Early stopping: steps per window; the last window's mean loss is compared with the one before.",
    )(command)
    command = click.option(
        "--early-stopping-tolerance", type=click.FloatRange(min=0), default=EARLY_STOPPING_TOLERANCE,
        show_default=True,
        help="Early stopping: stop when the mean loss improved by less than this fraction between two windows.",
    )(command)
    return click.option(
        "--early-stopping", is_flag=True, default=False,
        help="End training once the loss has levelled off (see the two options below) instead of after every step "
        "of --max-epochs; the step it stopped at is logged and kept in the history JSON.",
    )(command)
