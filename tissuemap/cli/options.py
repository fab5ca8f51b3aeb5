"""Options shared by several step commands."""

from __future__ import annotations

from pathlib import Path

import click

from tissuemap.interruption import EXIT_INTERRUPTED


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
