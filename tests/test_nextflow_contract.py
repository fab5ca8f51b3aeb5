"""The Nextflow pipeline and the command line cannot drift apart.

Every command line in a module's script block calls a bin/ executable that hands its arguments to a tissuemap
sub-command; every option the pipeline can add (the module's own, ``ext.args`` in conf/modules.config) must exist in
that sub-command, and the required ones must be given. The pipeline's defaults, the schema's and the command line's
must agree, and the container image must carry the package's version. Nextflow itself is not needed: the files are
read as text and the commands parsed with click, without running them.
"""

import json
import re
import shlex
from pathlib import Path

import click
import pytest

from tissuemap import __version__
from tissuemap.cli import main
from tissuemap.plan import MAPPING_MODES
from tissuemap.samplesheet import read_samplesheet

ROOT = Path(__file__).resolve().parents[1]
MODULES = sorted((ROOT / "modules" / "local").glob("*/main.nf"))
BIN = ROOT / "bin"
INTERPOLATION = re.compile(r"\$\{[^}]*\}")
OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")

# pipeline parameter -> the (sub-command, option) whose default it must equal
PARAMETER_DEFAULTS_FROM_CLI = {
    "min_counts": (("qc",), "min_counts"),
    "cell_count_cutoff": (("filter-genes",), "cell_count_cutoff"),
    "cell_percentage_cutoff2": (("filter-genes",), "cell_percentage_cutoff2"),
    "nonz_mean_cutoff": (("filter-genes",), "nonz_mean_cutoff"),
    "signatures_method": (("signatures",), "method"),
    "min_cells_per_type": (("signatures",), "min_cells_per_type"),
    "regression_epochs": (("signatures",), "max_epochs"),
    "regression_lr": (("signatures",), "lr"),
    "regression_batch_size": (("signatures",), "batch_size"),
    "mapping_mode": (("plan",), "mapping_mode"),
    "detection_alpha": (("plan",), "detection_alpha"),
    "mapping_epochs": (("map",), "max_epochs"),
    "mapping_lr": (("map",), "lr"),
    "early_stopping": (("map",), "early_stopping"),
    "early_stopping_tolerance": (("map",), "early_stopping_tolerance"),
    "early_stopping_window": (("map",), "early_stopping_window"),
    "spatialdata": (("map",), "spatialdata"),
    "min_shared_genes": (("map",), "min_shared_genes"),
    "seed": (("map",), "seed"),
}


def process_name(module_text: str) -> str:
    return re.search(r"^process\s+(\w+)\s*\{", module_text, re.MULTILINE).group(1)


def script_block(module_text: str) -> str:
    """The text between ``script:`` and ``stub:``: the Groovy lines and the shell command string."""
    return re.search(r"^\s*script:\s*$(.*?)^\s*stub:\s*$", module_text, re.MULTILINE | re.DOTALL).group(1)


def shell_commands(script: str) -> list[str]:
    """The command lines of the script's shell string, continuation lines joined."""
    shell = re.search(r'"""(.*?)"""', script, re.DOTALL).group(1)
    joined = re.sub(r"\\\\[ \t]*\n", " ", shell)
    return [line.strip() for line in joined.splitlines() if line.strip()]


def bin_command(executable: str) -> tuple[str, ...]:
    """The tissuemap sub-command that bin/EXECUTABLE hands its arguments to, e.g. ('report', 'sample')."""
    path = BIN / executable
    assert path.is_file(), f"{executable} is not in bin/"
    match = re.search(r'^exec tissuemap ([\w -]+?) "\$@"$', path.read_text(), re.MULTILINE)
    assert match, f"bin/{executable} does not end with: exec tissuemap COMMAND \"$@\""
    return tuple(match.group(1).split())


def click_command(words: tuple[str, ...]) -> click.Command:
    command = main
    for word in words:
        assert isinstance(command, click.Group), f"tissuemap {' '.join(words)}: {command.name} has no sub-commands"
        command = command.get_command(click.Context(command), word)
        assert command is not None, f"tissuemap {' '.join(words)}: no such command"
    return command


def placeholder_value(command: click.Command, option: str, scratch: Path) -> list[str]:
    """A value the option accepts (an existing file for a path that must exist...), or none for a flag."""
    param = next((p for p in command.params if option in p.opts), None)
    if param is None:
        return []  # make_context reports the unknown option
    if getattr(param, "is_flag", False):
        return []
    candidates = ["1", "0.5", "x", str(scratch / "file"), str(scratch / "folder")]
    if isinstance(param.type, click.Choice):
        candidates.insert(0, str(param.type.choices[0]))
    for candidate in candidates:
        try:
            param.type.convert(candidate, param, None)
        except click.BadParameter:
            continue
        return [candidate]
    raise AssertionError(f"no placeholder value fits {option} of {command.name}")


def check_command_line(line: str, extra_options: list[str], scratch: Path) -> click.Command:
    """Parse a module's command line, and the options it may add, with the click command it calls.

    Nextflow values (``${...}``) after an option become a value that option accepts; those standing alone (``${args}``)
    are the optional options, given here as ``extra_options``. Raises click's error for an unknown option, a missing
    required one or a literal value the option refuses.
    """
    (scratch / "file").touch()
    (scratch / "folder").mkdir(exist_ok=True)
    placeholders = []

    def placeholder(match: re.Match) -> str:
        placeholders.append(match.group(0))
        return f"NFVALUE{len(placeholders) - 1}"

    line = INTERPOLATION.sub(placeholder, line)
    placeholder_tokens = {f"NFVALUE{index}" for index in range(len(placeholders))}
    executable, *tokens = shlex.split(line)
    command = click_command(bin_command(executable))
    args = []
    for index, token in enumerate(tokens):
        if token in placeholder_tokens:
            if index and tokens[index - 1].startswith("--"):
                args += placeholder_value(command, tokens[index - 1], scratch)
        else:
            args.append(token)
    for option in dict.fromkeys(extra_options):
        args += [option, *placeholder_value(command, option, scratch)]
    command.make_context(executable, args, resilient_parsing=False)
    return command


def tissuemap_command_lines(module: Path) -> list[str]:
    return [line for line in shell_commands(script_block(module.read_text())) if line.startswith("tissuemap-")]


def test_every_step_has_a_module():
    assert {module.parent.name for module in MODULES} >= {
        "plan", "qc", "filter_genes", "signatures", "map", "report_sample", "report_reference", "report_summary",
        "multiqc_content", "multiqc",
    }


@pytest.mark.parametrize("module", MODULES, ids=[module.parent.name for module in MODULES])
def test_module_command_line_is_accepted_by_the_cli(module, config_blocks, tmp_path):
    text = module.read_text()
    lines = tissuemap_command_lines(module)
    if module.parent.name == "multiqc":
        assert not lines and "multiqc" in shell_commands(script_block(text))[0]
        return
    assert len(lines) == 1, f"{module}: expected one tissuemap step per module, found {lines}"
    # options written in the module's Groovy (per-sample values from the meta map) and in conf/modules.config
    groovy_options = OPTION.findall(INTERPOLATION.sub(" ", script_block(text).split('"""')[0]))
    extra = groovy_options + [option for block in config_blocks(process_name(text)) for option in OPTION.findall(block)]
    check_command_line(lines[0], extra, tmp_path)


@pytest.mark.parametrize(
    ("line", "extra", "error"),
    [
        ("tissuemap-filter-genes --reference ${reference} --label-key x --outdir .", [], click.NoSuchOption),
        ("tissuemap-filter-genes --reference ${reference} --outdir .", [], click.MissingParameter),
        ("tissuemap-qc --sample ${meta.id} --input ${x} --outdir .", ["--min-count"], click.NoSuchOption),
        ("tissuemap-signatures --reference ${r} --labels-key k --device gpu --outdir .", [], click.BadParameter),
        ("tissuemap-map --spatial ${spatial} --plan ${plan} --outdir .", [], click.MissingParameter),
    ],
    ids=["renamed-option", "missing-required", "renamed-ext-args-option", "refused-value", "map-missing-required"],
)
def test_the_check_catches_drift(line, extra, error, tmp_path):
    with pytest.raises(error):
        check_command_line(line, extra, tmp_path)


def test_bin_executables_hand_over_to_commands_the_modules_use():
    used = {line.split()[0] for module in MODULES for line in tissuemap_command_lines(module)}
    executables = {path.name for path in BIN.iterdir()}
    assert executables == used, "every bin/ executable is called by a module, and only those"
    for name in executables:
        assert (BIN / name).stat().st_mode & 0o111, f"bin/{name} is not executable"
        click_command(bin_command(name))


def config_params() -> dict:
    """The params block of nextflow.config: name -> value (None, bool, number or string; expressions skipped)."""
    text = (ROOT / "nextflow.config").read_text()
    block = re.search(r"^params\s*\{(.*?)^\}", text, re.MULTILINE | re.DOTALL).group(1)
    values = {}
    for name, raw in re.findall(r"^\s*(\w+)\s*=\s*(.+?)\s*$", block, re.MULTILINE):
        if raw == "null":
            values[name] = None
        elif raw in ("true", "false"):
            values[name] = raw == "true"
        elif re.fullmatch(r"-?\d+", raw):
            values[name] = int(raw)
        elif re.fullmatch(r"-?\d*\.\d+", raw):
            values[name] = float(raw)
        elif re.fullmatch(r"'[^']*'", raw):
            values[name] = raw[1:-1]
        else:
            values[name] = raw  # an expression, e.g. the run's date
    return values


def schema_params() -> dict:
    schema = json.loads((ROOT / "nextflow_schema.json").read_text())
    assert [ref["$ref"].split("/")[-1] for ref in schema["allOf"]] == list(schema["$defs"])
    return {name: rule for group in schema["$defs"].values() for name, rule in group["properties"].items()}


def test_schema_documents_every_parameter_with_its_default():
    params, schema = config_params(), schema_params()
    assert set(params) == set(schema)
    for name, value in params.items():
        rule = schema[name]
        assert rule.get("type") and rule.get("description"), f"{name}: no type or description in the schema"
        if name == "trace_report_suffix":
            continue  # the run's date and time
        assert rule.get("default") == value, f"{name}: nextflow.config says {value!r}, the schema {rule.get('default')!r}"
        if value is not None:
            python_type = {"integer": int, "number": (int, float), "boolean": bool, "string": str}[rule["type"]]
            assert isinstance(value, python_type), f"{name}: {value!r} is not of the schema's type {rule['type']}"


@pytest.mark.parametrize("parameter", sorted(PARAMETER_DEFAULTS_FROM_CLI))
def test_pipeline_defaults_are_the_steps_defaults(parameter):
    words, option = PARAMETER_DEFAULTS_FROM_CLI[parameter]
    command = click_command(words)
    default = next(param.default for param in command.params if param.name == option)
    assert config_params()[parameter] == default


def test_mapping_modes_and_required_parameters_match_the_local_runner():
    rule = schema_params()["mapping_mode"]
    for words in (("run",), ("plan",)):
        modes = next(param.type.choices for param in click_command(words).params if param.name == "mapping_mode")
        assert rule["enum"] == list(modes) == list(MAPPING_MODES)
    # n_cells_per_location is optional in both engines (tissuemap plan requires it when a sample has none)
    schema = json.loads((ROOT / "nextflow_schema.json").read_text())
    assert "n_cells_per_location" not in schema["$defs"]["mapping_options"].get("required", [])
    for words in (("run",), ("plan",)):
        assert not next(param for param in click_command(words).params if param.name == "n_cells_per_location").required


def test_container_image_carries_the_package_version():
    config = (ROOT / "nextflow.config").read_text()
    assert re.search(r"^\s*container\s*=\s*'ghcr\.io/tissuemap/tissuemap:([^']+)'", config, re.MULTILINE).group(1) \
        == __version__
    assert re.search(r"^\s*version\s*=\s*'([^']+)'", config, re.MULTILINE).group(1) == __version__
    assert f'org.opencontainers.image.version="{__version__}"' in (ROOT / "containers" / "Dockerfile").read_text()
    assert f"Version {__version__}" in (ROOT / "containers" / "tissuemap.def").read_text()


def test_test_profile_data_passes_the_samplesheet_validation():
    test_config = (ROOT / "conf" / "test.config").read_text()
    paths = dict(re.findall(r'^\s*(input|reference)\s*=[^"\n]*"\$\{projectDir\}/([^"]+)"', test_config, re.MULTILINE))
    samples = read_samplesheet(ROOT / paths["input"])
    assert [sample.sample for sample in samples] == ["sample1", "sample2"]
    assert (ROOT / paths["reference"]).is_file()
    bundled = sum(path.stat().st_size for path in (ROOT / "tests" / "data" / "simulated").rglob("*") if path.is_file())
    assert bundled < 1_000_000, "the bundled test data must stay under 1 MB"
