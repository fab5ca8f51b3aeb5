"""The Nextflow pipeline fits the same samples together and publishes the same files as `tissuemap run`.

Nextflow itself is not needed. The pipeline's groups are those of the mapping plan that its TISSUEMAP_PLAN task writes:
the plan command is run here with the options conf/modules.config gives it. Its published layout is the stub layout:
each module's stub block is run in a scratch folder per task, the files its ``output:`` globs catch are placed where
conf/modules.config's publishDir puts them, task by task as workflows/tissuemap.nf forms the tasks from the plan.
Both are compared with a real `tissuemap run` of the same samplesheet, in each of the three mapping modes.
"""

import csv
import re
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from tissuemap.cli import main
from tissuemap.runner import RunOptions, plan_steps

ROOT = Path(__file__).resolve().parents[1]
MODES = ("per-sample", "joint", "slide")
# Nextflow's own files and MultiQC's are not `tissuemap run`'s; pipeline_info/ is compared by the plan alone
PIPELINE_ONLY = re.compile(r"^(multiqc/|pipeline_info/(?!mapping_plan\.csv$))")
RUNNER_ONLY = re.compile(r"^pipeline_info/(?!mapping_plan\.csv$)")
# the pipeline's parameters of the run below (the mapping mode varies)
PARAMS = {"reference": "lymph_node_330cells.h5ad", "labels_key": "cell_type", "n_cells_per_location": 30,
          "detection_alpha": 20.0}


def module_text(name: str) -> str:
    return (ROOT / "modules" / "local" / name / "main.nf").read_text()


def plan_options(config_blocks, params: dict) -> list[str]:
    """The options conf/modules.config gives `tissuemap plan`: each "--option ${params.NAME}" whose param is set."""
    options = []
    block = "".join(config_blocks("TISSUEMAP_PLAN"))
    for option, name in re.findall(r'"(--[a-z-]+) \'?\$\{params\.(\w+)\}\'?"', block):
        if params.get(name) is not None:
            options += [option, str(params[name])]
    return options


def publish_folder(config_blocks, process: str, meta_id: str | None) -> str:
    """Where publishDir puts the process's files, relative to --outdir ('' for --outdir itself)."""
    (path,) = [match.group(1) for block in config_blocks(process)
               for match in [re.search(r"path:\s*\{\s*(.*?)\s*\},?\s*$", block, re.MULTILINE)] if match]
    if path == "params.outdir":
        return ""
    folder = re.fullmatch(r'"\$\{params\.outdir\}/(.*)"', path).group(1)
    return folder.replace("${meta.id}", meta_id or "")


def stub_outputs(process_module: str, meta: dict, scratch: Path) -> list[str]:
    """Run the module's stub in ``scratch`` with ``meta``; the files its output globs catch, relative to it."""
    text = module_text(process_module)
    stub = re.search(r"^\s*stub:\s*$.*?\"\"\"(.*?)\"\"\"", text, re.MULTILINE | re.DOTALL).group(1)
    shell = (stub.replace("${meta.samples.join(' ')}", " ".join(meta.get("samples", [])))
             .replace("${meta.id}", meta.get("id", "")).replace("\\$", "$").replace("\\\\", "\\"))
    assert "${" not in shell, f"{process_module}: stub has Groovy values this test does not fill in: {shell}"
    scratch.mkdir(parents=True)
    subprocess.run(["bash", "-euo", "pipefail", "-c", shell], cwd=scratch, check=True)
    output_block = re.search(r"^\s*output:\s*$(.*?)^\s*script:\s*$", text, re.MULTILINE | re.DOTALL).group(1)
    globs = [pattern.replace("${meta.id}", meta.get("id", ""))
             for pattern in re.findall(r'path\(?\s*"([^"]+)"', output_block)]
    return sorted({str(path.relative_to(scratch)) for pattern in globs for path in scratch.glob(pattern)})


def pipeline_layout(config_blocks, plan_rows: list[dict], scratch: Path) -> set[str]:
    """The files the pipeline publishes (stub run), for the samples and groups of ``plan_rows``."""
    samples = [row["sample"] for row in plan_rows]
    groups: dict[str, list[str]] = {}
    for row in plan_rows:
        groups.setdefault(row["group"], []).append(row["sample"])
    tasks = [("TISSUEMAP_QC", "qc", {"id": name}) for name in samples]
    tasks += [(process, module, {"id": "reference"}) for process, module in (
        ("TISSUEMAP_FILTERGENES", "filter_genes"), ("TISSUEMAP_SIGNATURES", "signatures"),
        ("TISSUEMAP_REPORTREFERENCE", "report_reference"))]
    tasks += [("TISSUEMAP_MAP", "map", {"id": group, "samples": names}) for group, names in groups.items()]
    tasks += [("TISSUEMAP_REPORTSAMPLE", "report_sample", {"id": name}) for name in samples]
    tasks += [("TISSUEMAP_REPORTSUMMARY", "report_summary", {})]
    published = {"pipeline_info/mapping_plan.csv"}  # TISSUEMAP_PLAN's, checked apart
    assert publish_folder(config_blocks, "TISSUEMAP_PLAN", None) == "pipeline_info"
    for index, (process, module, meta) in enumerate(tasks):
        folder = publish_folder(config_blocks, process, meta.get("id"))
        for name in stub_outputs(module, meta, scratch / str(index)):
            published.add(f"{folder}/{name}" if folder else name)
    return published


def read_plan_rows(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def samplesheet(real_data, tmp_path_factory):
    """Three samples: a and b share slide s1, c is alone and has its own settings."""
    sheet = tmp_path_factory.mktemp("layout") / "samplesheet.csv"
    outs = real_data / "visium" / "breast_crop"
    sheet.write_text("sample,spaceranger_dir,n_cells_per_location,detection_alpha,slide\n"
                     f"a,{outs},,,s1\nb,{outs},,,s1\nc,{outs},12,200,\n")
    return sheet


@pytest.fixture(scope="module")
def run_results(real_data, samplesheet):
    """A real `tissuemap run` (slide mode, a few training steps) of the samplesheet."""
    results = samplesheet.parent / "results"
    result = CliRunner().invoke(main, [
        "run", "--input", str(samplesheet), "--reference", str(real_data / "reference" / "lymph_node_330cells.h5ad"),
        "--labels-key", "cell_type", "--n-cells-per-location", "30", "--regression-epochs", "2",
        "--mapping-epochs", "3", "--mapping-mode", "slide", "--outdir", str(results)])
    assert result.exit_code == 0, result.output
    return results


@pytest.mark.parametrize("mode", MODES)
def test_pipeline_fits_the_same_groups_and_publishes_the_same_files_as_run(mode, samplesheet, run_results,
                                                                           config_blocks, tmp_path):
    params = {**PARAMS, "mapping_mode": mode}
    # the pipeline's plan: `tissuemap plan` with conf/modules.config's options, as TISSUEMAP_PLAN runs it
    result = CliRunner().invoke(main, ["plan", "--input", str(samplesheet), *plan_options(config_blocks, params),
                                       "--outdir", str(tmp_path / "plan")])
    assert result.exit_code == 0, result.output
    plan_rows = read_plan_rows(tmp_path / "plan" / "mapping_plan.csv")
    pipeline_groups = {}
    for row in plan_rows:
        pipeline_groups.setdefault(row["group"], []).append(row["sample"])

    steps = plan_steps(samplesheet, RunOptions(reference="r.h5ad", labels_key="cell_type", n_cells_per_location=30,
                                               mapping_mode=mode), run_results)
    map_steps = [step for step in steps if step.command == ("map",)]
    run_groups = [[Path(path).name.removesuffix(".qc.h5ad") for path in step.args[1:step.args.index("--signatures")]]
                  for step in map_steps]
    assert sorted(run_groups) == sorted(pipeline_groups.values())
    assert {"per-sample": [["a"], ["b"], ["c"]], "joint": [["a", "b", "c"]],
            "slide": [["a", "b"], ["c"]]}[mode] == sorted(run_groups)
    # the run plans with the same command and mode (test_both_engines_read_the_same_plan compares the files)
    run_plan = next(step for step in steps if step.command == ("plan",))
    assert run_plan.args[run_plan.args.index("--mapping-mode") + 1] == mode

    # the layout: every file the pipeline publishes is one `tissuemap run` writes, and the other way round
    published = {name for name in pipeline_layout(config_blocks, plan_rows, tmp_path / "stub")
                 if not PIPELINE_ONLY.match(name)}
    written = {str(path.relative_to(run_results)) for path in run_results.rglob("*")
               if path.is_file() and not RUNNER_ONLY.match(str(path.relative_to(run_results)))}
    assert published == written
    # every map step of the run writes into the results folder itself, in each mode, as the pipeline publishes
    assert {step.args[step.args.index("--outdir") + 1] for step in map_steps} == {str(run_results)}


def test_both_engines_read_the_same_plan(samplesheet, run_results, config_blocks, tmp_path):
    """The run's plan (slide mode) is the file the pipeline's plan task writes with the same options."""
    params = {**PARAMS, "mapping_mode": "slide"}
    result = CliRunner().invoke(main, ["plan", "--input", str(samplesheet), *plan_options(config_blocks, params),
                                       "--outdir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "mapping_plan.csv").read_text() == (run_results / "pipeline_info" / "mapping_plan.csv").read_text()
    assert (tmp_path / "mapping_plan.csv").read_text().splitlines() == [
        "group,sample,slide,n_cells_per_location,detection_alpha",
        "slide-s1,a,s1,30.0,20.0", "slide-s1,b,s1,30.0,20.0", "slide-c,c,c,12.0,200.0"]
    # and the workflow forms its mapping tasks from the plan's group column, with the plan as the map step's input
    workflow = (ROOT / "workflows" / "tissuemap.nf").read_text()
    assert "row -> [row.group, row.sample]" in workflow
    assert "TISSUEMAP_MAP(ch_map_input, ch_signatures_csv, TISSUEMAP_PLAN.out.csv)" in workflow
