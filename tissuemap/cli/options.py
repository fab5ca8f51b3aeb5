"""Options shared by several step commands."""

from __future__ import annotations

import click


def checkpoint_options(default_every: int, unit: str, checkpoint_name: str):
    """``--checkpoint-every`` and ``--resume`` for a training step that saves its state every so many ``unit``."""

    def decorate(command):
        command = click.option(
            "--resume", is_flag=True,
            help="Continue an interrupted run from its checkpoint (same inputs and options; a fresh start when there "
            "is none). CPU results equal those of an uninterrupted run bit for bit.",
        )(command)
        return click.option(
            "--checkpoint-every", default=default_every, show_default=True, type=click.IntRange(min=0),
            help=f"Save the training state to OUTDIR/{checkpoint_name} every this many {unit} (0: never); it is "
            "deleted once the outputs are written.",
        )(command)

    return decorate
