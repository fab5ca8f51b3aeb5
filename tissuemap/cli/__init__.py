"""The ``tissuemap`` command line: one sub-command per pipeline step.

Sub-commands live in their own modules and are imported only when called (or listed by ``--help``); each imports
its heavy dependencies inside its function body, which keeps ``tissuemap --help`` well under a second.
"""

from __future__ import annotations

import importlib

import click

from tissuemap import __version__
from tissuemap.errors import InputError

# name -> "module:attribute" of the click command
COMMANDS = {
    "simulate": "tissuemap.cli.simulate:simulate",
    "plan": "tissuemap.cli.plan:plan",
    "qc": "tissuemap.cli.qc:qc",
    "filter-genes": "tissuemap.cli.filter_genes:filter_genes",
    "signatures": "tissuemap.cli.signatures:signatures",
    "map": "tissuemap.cli.map:map_command",
    "report": "tissuemap.cli.report:report",
    "multiqc-content": "tissuemap.cli.multiqc:multiqc_content",
    "run": "tissuemap.cli.run:run",
}


class StepGroup(click.Group):
    """A group that loads sub-commands lazily and turns :class:`InputError` into a one-line error."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attribute = target.split(":")
        return getattr(importlib.import_module(module_name), attribute)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except InputError as err:
            raise click.ClickException(str(err)) from None


@click.group(cls=StepGroup, context_settings={"show_default": True, "help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tissuemap")
@click.option("-v", "--verbose", count=True, help="More log detail (repeat for more).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
def main(verbose: int, quiet: bool) -> None:
    """Map cell types onto 10x Visium samples with the cell2location model (Pyro, CPU or GPU).

    Each pipeline step is a command; `tissuemap run` runs them all on one machine.
    """
    from tissuemap.log import configure

    configure(-1 if quiet else verbose)
