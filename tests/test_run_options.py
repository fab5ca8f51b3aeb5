"""`tissuemap run` offers every option that a step's message names, with the steps' own defaults shown in its help,
and a step's error inside `run` names the run's option."""

import ast
import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from tissuemap.cli import main
from tissuemap.runner import PASSED_OPTIONS, run_option, translate_message

PACKAGE = Path(__file__).resolve().parents[1] / "tissuemap"
# a command-line option; not a Nextflow parameter named beside it (--labels_key)
OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*(?![\w-])")
# calls whose string arguments are messages a user reads: errors and log records
MESSAGE_CALLS = {"InputError", "BadParameter", "UsageError", "ClickException", "debug", "info", "warning", "error"}
# `tissuemap simulate` makes test data; it is no step of a run
NOT_STEPS = {PACKAGE / "simulation", PACKAGE / "cli" / "simulate.py"}
# options that messages name but that a user of `run` never gives, each with the reason
NOT_FOR_RUN = {
    "--input-dir": "the report steps' input folder: the runner gives its own results folder",
    "--samples": "the summary's sample list: the runner gives the samplesheet's",
    "--sample": "the qc step's sample name: the runner gives the samplesheet's (whose errors name row and column)",
    "--report-link": "the summary's link pattern: the runner keeps its default",
    "--checkpoint-every": "its message answers a value given to a training step; the runner keeps the default",
    "--resume": "a training step's flag; `run` reuses finished steps instead",
    "--plan": "the map step's mapping plan: the runner writes it with `tissuemap plan` and passes it on",
    "--cell-counts": "the map step's cell counts files: the runner passes the samplesheet's cell_counts column (checked "
                     "before any step)",
    "--bin-size": "the qc step's Visium HD bin size: the runner passes the samplesheet's bin_size column (checked "
                  "before any step)",
}


def in_package(path: Path) -> bool:
    return not any(path == skipped or skipped in path.parents for skipped in NOT_STEPS)


def options_named_in_messages() -> dict[str, set[str]]:
    """Every ``--option`` in the package's messages -> the files that name it.

    A message's text is in the string arguments of an error or log call; an option a helper puts into its message
    is a string argument holding just the option (e.g. ``_positive(lr, "the learning rate", "--lr")``), outside
    the command declarations (cli/) and the runner's command lines.
    """
    named: dict[str, set[str]] = {}
    for path in sorted(filter(in_package, PACKAGE.rglob("*.py"))):
        builds_commands = path.parent.name in ("cli", "runner")
        texts = []
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                function = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                if function in MESSAGE_CALLS:
                    texts += [sub.value for sub in ast.walk(node)
                              if isinstance(sub, ast.Constant) and isinstance(sub.value, str)]
            elif (isinstance(node, ast.Constant) and isinstance(node.value, str) and OPTION.fullmatch(node.value)
                  and not builds_commands):
                texts.append(node.value)
        for text in texts:
            for option in OPTION.findall(text):
                named.setdefault(option, set()).add(str(path.relative_to(PACKAGE)))
    return named


def command(*words) -> click.Command:
    found = main
    for word in words:
        found = found.get_command(click.Context(found), word)
    return found


def parameters(*words) -> dict[str, click.Parameter]:
    """A command's options by their long name."""
    return {name: parameter for parameter in command(*words).params for name in parameter.opts if name[:2] == "--"}


def test_every_option_a_message_names_is_accepted_by_run():
    named = options_named_in_messages()
    # the collection sees the messages of every kind of step (it cannot pass by finding nothing)
    assert {"--min-shared-genes", "--layer", "--labels-key", "--min-cells-per-type", "--min-counts", "--lr",
            "--max-epochs", "--cell-count-cutoff", "--threads", "--outdir"} <= set(named)
    run = parameters("run")
    # a step's option that the runner passes on is named, in a message of that step inside `run`, by the run option
    # that sets it (translate_message)
    translated = {option for step in PASSED_OPTIONS.values() for option, field in step.items()
                  if run_option(field) in run}
    missing = {option: sorted(files) for option, files in named.items()
               if option not in run and option not in translated and option not in NOT_FOR_RUN}
    assert not missing, f"`tissuemap run` lacks options its steps' messages name: {missing}"
    # every exception is still needed: named somewhere, and not an option of `run`
    assert set(NOT_FOR_RUN) <= set(named) and not set(NOT_FOR_RUN) & set(run)


def test_run_passes_each_option_to_a_step_that_has_it_with_the_same_default():
    run = parameters("run")
    for step, options in PASSED_OPTIONS.items():
        own = parameters(step)
        for option, field in options.items():
            assert option in own, f"tissuemap {step} has no {option}"
            run_parameter = run[run_option(field)]
            if run_parameter.default is not None:  # None: the step's own default applies
                assert run_parameter.default == own[option].default, (step, option)


def test_run_help_shows_the_steps_default_values():
    from tissuemap import defaults

    help_text = " ".join(CliRunner().invoke(main, ["run", "--help"], terminal_width=1000).output.split())
    for option, value in [("--mapping-epochs", defaults.MAPPING_MAX_EPOCHS), ("--lr", defaults.MAPPING_LR),
                          ("--regression-epochs", defaults.SIGNATURES_MAX_EPOCHS),
                          ("--min-shared-genes", defaults.MAPPING_MIN_SHARED_GENES),
                          ("--detection-alpha", defaults.MAPPING_DETECTION_ALPHA), ("--method", "nb")]:
        assert re.search(rf"{option} \S+ .*?\[default: {re.escape(str(value))}[;\]]", help_text), option
    assert "step's" not in help_text and "steps'" not in help_text


@pytest.mark.parametrize("message, step, expected", [
    ("diverged; lower --lr (now 0.5)", ("signatures",), "diverged; lower --regression-lr (now 0.5)"),
    ("diverged; lower --lr (now 0.5)", ("map",), "diverged; lower --lr (now 0.5)"),
    ("--max-epochs 0: must be at least 1", ("map",), "--mapping-epochs 0: must be at least 1"),
    ("--batch-size: 0 is below 1; see --batch-sizes", ("signatures",),
     "--regression-batch-size: 0 is below 1; see --batch-sizes"),
    ("x.h5ad: not found; give the --input-dir", ("report", "sample"), "x.h5ad: not found; give the --input-dir"),
])
def test_a_step_message_inside_run_names_the_run_option(message, step, expected):
    assert translate_message(message, step) == expected
