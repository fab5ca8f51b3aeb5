"""Side by side: tissuemap and the cell2location package (0.1.5) on the same data, machine and number of steps.

1. Data: ``tissuemap simulate`` draws one Visium sample (``--n-spots`` x ``--n-genes``, ``--n-cell-types``, known
   cells per spot) and a reference of ``--n-cells`` cells from ``--n-batches`` 10x reactions (3' and 5'
   chemistry); ``tissuemap qc`` (mitochondrial genes out) and ``tissuemap filter-genes`` (the tutorial's filter)
   prepare it, so that both tools read the very same files.
2. Regression: both tools fit the reference signatures on the filtered reference (batch, and technology as a
   covariate), with the same epochs, minibatch size and learning rate.
3. Mapping: both tools map the sample with the SAME signatures (tissuemap's by default; ``--mapping-signatures
   both`` also gives both mappers the package's), the same N_cells_per_location, detection_alpha, steps and
   learning rate. tissuemap also maps with the package's signatures and with a second seed (both cheap), which
   separates what the signatures change from what the mapper changes, and shows a tool's own seed-to-seed spread.

Every run is its own subprocess: the package's in its own virtual environment (``--c2l-python``; see
``benchmarks/c2l_runner.py``), tissuemap's in this Python. Each reports its wall time per phase (import, setup,
training, posterior export) and iterations per second; its peak memory (RSS) is measured from outside with
``os.wait4``. The package exports with ``export_posterior`` and ``--num-samples`` posterior draws (its default is
1,000); tissuemap with exact log-normal quantiles of the guide.

Accuracy against the truth, per mapping: Pearson correlation of the q05 cell abundance with the true cells per spot
over all spots and types, and the average precision of q05 for the presence of a type (true cells > 0), averaged
over types. Agreement: per cell type, Pearson correlation of tissuemap's q05 with the package's q05 (same
signatures, same steps). Signatures: Pearson correlation of log signatures with the simulation's log expression
profiles, and per type between the two tools.

Also measured: ``tissuemap --help`` wall time and ``import cell2location`` time (fresh processes, median).
``--memory-sizes`` instead runs tissuemap's mapping alone at several sizes for a few steps and fits its peak RSS
against spots x genes and non-zero counts (the largest joint mapping that fits in a given memory follows from it).

Prints a markdown report and writes it (``--markdown``) and the JSON of every figure (``--json``). With the
defaults it takes about 12 minutes on a quiet 2-core machine, most of it the package's mapping; a loaded machine
slows it two- to three-fold. Timings on a shared machine vary from run to run: every run records the load average
before and after it, and tissuemap's timed steps run ``--tissuemap-repeats`` times (median reported).

Usage::

    python -m venv /work/c2l-venv
    /work/c2l-venv/bin/pip install -r benchmarks/requirements-cell2location.txt
    python benchmarks/compare_cell2location.py --c2l-python /work/c2l-venv/bin/python \\
        --json comparison.json --markdown comparison.md
    python benchmarks/compare_cell2location.py --memory-sizes 1000x2000,2000x5000,4000x10000,8000x16000 \\
        --n-cell-types 20 --json memory.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SAMPLE = "sample1"  # the name tissuemap simulate gives the first sample
LABELS_KEY, BATCH_KEY, COVARIATE_KEY = "cell_type", "batch", "technology"
PHASES = ("import", "setup", "training", "export")
TOOLS = {"package": "cell2location 0.1.5", "tissuemap": "tissuemap"}
# the product promise: per-type agreement of tissuemap's q05 with the package's at equal steps
AGREEMENT_TARGET = 0.95
TARGETS = {"mapping": 10.0, "regression": 5.0, "export": 20.0}  # whole-step and export speed-ups on a CPU
ACCURACY_TOLERANCE = 0.005  # tissuemap's Pearson may be at most this much below the package's
MEMORY_DENSITIES = (0.1, 0.3)  # non-zero fractions at which the largest mapping is stated (Visium: ~0.05-0.3)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """The module's documentation as written, and every option's default."""


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    data = parser.add_argument_group("data (tissuemap simulate)")
    data.add_argument("--n-spots", type=int, default=600, help="spots of the Visium sample")
    data.add_argument("--n-genes", type=int, default=1200, help="genes, 13 mitochondrial ones included")
    data.add_argument("--n-cell-types", type=int, default=10, help="cell types")
    data.add_argument("--n-cells", type=int, default=2500, help="reference cells")
    data.add_argument("--n-batches", type=int, default=4, help="10x reactions of the reference")
    data.add_argument("--seed", type=int, default=0, help="seed of the simulation and of every fit")

    model = parser.add_argument_group("fits (the same for both tools)")
    model.add_argument("--n-cells-per-location", type=float, default=8.0,
                       help="N_cells_per_location of the mapping, and the simulation's mean cells per spot")
    model.add_argument("--detection-alpha", type=float, default=20.0, help="detection_alpha of the mapping")
    model.add_argument("--mapping-steps", type=int, default=3000, help="full-data training steps of the mapping")
    model.add_argument("--regression-epochs", type=int, default=100, help="epochs of the regression")
    model.add_argument("--batch-size", type=int, default=2500, help="cells per minibatch of the regression")
    model.add_argument("--lr", type=float, default=0.002, help="learning rate of both fits")
    model.add_argument("--num-samples", type=int, default=100,
                       help="posterior draws of the package's export_posterior (its default: 1000)")
    model.add_argument("--mapping-signatures", choices=("tissuemap", "both"), default="tissuemap",
                       help="whose signatures both mappers are given: tissuemap's, or also the package's (a second "
                            "package mapping)")
    model.add_argument("--package-seed-repeat", action="store_true",
                       help="map a second time with the package (seed + 1) to measure its own seed-to-seed agreement")

    run = parser.add_argument_group("running")
    run.add_argument("--c2l-python", type=Path, default=Path(os.environ.get("C2L_PYTHON", "/work/c2l-venv/bin/python")),
                     help="Python of the cell2location package's virtual environment [env C2L_PYTHON]")
    run.add_argument("--tissuemap-repeats", type=int, default=3,
                     help="times each timed tissuemap step is run (the median run is reported); the package's runs, "
                          "minutes long, run once")
    run.add_argument("--workdir", type=Path, default=None,
                     help="folder for the data and every run's files, kept; data already there is reused "
                          "[default: a temporary folder, removed]")
    run.add_argument("--memory-sizes", default="",
                     help="instead of the comparison: tissuemap's mapping alone at these SPOTSxGENES sizes "
                          "(comma-separated, e.g. 1000x2000,2000x5000), --memory-steps steps each, peak RSS fitted "
                          "against spots x genes")
    run.add_argument("--memory-steps", type=int, default=20, help="training steps of each --memory-sizes run")
    run.add_argument("--json", type=Path, default=None, help="write every figure to this JSON file")
    run.add_argument("--markdown", type=Path, default=None, help="write the markdown report to this file")
    run.add_argument("--worker", choices=("regression", "mapping"), default=None, help=argparse.SUPPRESS)
    run.add_argument("--job", type=Path, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# --- tissuemap's side: runs in a subprocess of this script (--worker), like the package's c2l_runner.py -------------

def tissuemap_regression(job: dict, seconds: dict) -> dict:
    """tissuemap's regression on ``job['reference']``; phase times into ``seconds``, signatures.csv into out_dir."""
    started = time.perf_counter()
    import anndata  # noqa: F401  (the modules the step uses, imported up front as the package imports its own)

    import tissuemap.models.regression  # noqa: F401
    from tissuemap.reference import read_reference
    from tissuemap.signatures import estimate_signatures, signature_table

    seconds["import"] = time.perf_counter() - started
    started = time.perf_counter()
    reference = read_reference(job["reference"], LABELS_KEY, batch_key=BATCH_KEY, covariate_keys=(COVARIATE_KEY,))
    seconds["setup"] = time.perf_counter() - started
    started = time.perf_counter()
    record = estimate_signatures(reference, LABELS_KEY, batch_key=BATCH_KEY, covariate_keys=(COVARIATE_KEY,),
                                 max_epochs=job["epochs"], batch_size=job["batch_size"], lr=job["lr"], device="cpu",
                                 seed=job["seed"])
    # tissuemap's training time includes putting the counts on the device, as the package's train() includes
    # building its data loaders
    seconds["training"] = record["training_seconds"]
    seconds["export"] = time.perf_counter() - started - record["training_seconds"]
    signature_table(reference).to_csv(Path(job["out_dir"]) / "signatures.csv")
    return {
        "n_cells": record["n_cells"],
        "n_genes": record["n_genes"],
        "n_types": record["n_types"],
        "epochs": record["epochs"],
        "steps": record["epochs"] * record["steps_per_epoch"],
        "batch_size": record["batch_size"],
        "epochs_per_second": record["epochs"] / record["training_seconds"],
        "iterations_per_second": record["epochs"] * record["steps_per_epoch"] / record["training_seconds"],
        "final_loss_per_cell": record["elbo"][-1] / record["n_cells"],
        "export_method": "exact log-normal summaries of the guide",
    }


def tissuemap_mapping(job: dict, seconds: dict) -> dict:
    """tissuemap's mapping of ``job['spatial']``; phase times into ``seconds``, q05 and mean abundance CSVs into
    out_dir."""
    started = time.perf_counter()
    import anndata  # noqa: F401  (the modules the step uses, imported up front as the package imports its own)

    import tissuemap.models.cell2location  # noqa: F401
    from tissuemap.mapping import map_samples

    seconds["import"] = time.perf_counter() - started
    result = map_samples([job["spatial"]], job["signatures"], n_cells_per_location=job["n_cells_per_location"],
                         detection_alpha=job["detection_alpha"], max_epochs=job["steps"], lr=job["lr"], device="cpu",
                         seed=job["seed"], min_shared_genes=1, progress=False)
    fit = result.fit
    seconds["setup"] = fit.seconds["read"] + fit.seconds["data_setup"] + fit.seconds["model_setup"]
    seconds["training"] = fit.seconds["training"]
    seconds["export"] = fit.seconds["export"]
    adata = next(iter(result.samples.values()))
    for stat, label in (("q05", "q05"), ("means", "mean")):
        table = adata.obsm[f"{stat}_cell_abundance_w_sf"].copy()
        table.columns = result.setup.cell_types
        table.index.name = "barcode"
        table.to_csv(Path(job["out_dir"]) / f"cell_abundance_{label}.csv")
    return {
        "n_spots": adata.n_obs,
        "n_genes": adata.n_vars,
        "n_types": len(result.setup.cell_types),
        "steps": fit.steps,
        "iterations_per_second": fit.iterations_per_second,
        "final_loss_per_spot": float(fit.loss[-1]) / adata.n_obs,
        "export_method": "exact log-normal summaries of the guide",
    }


def run_worker(step: str, job_path: Path) -> int:
    import resource

    from tissuemap.log import configure

    configure(-1)
    job = json.loads(job_path.read_text())
    seconds: dict = {}
    # nothing heavy is imported before the step: its own import phase times torch, pyro, anndata and tissuemap
    result = (tissuemap_regression if step == "regression" else tissuemap_mapping)(job, seconds)
    import torch

    from tissuemap import __version__

    result.update(tool="tissuemap", step=step, lr=job["lr"], seed=job["seed"], seconds=seconds,
                  torch_threads=torch.get_num_threads(),
                  versions={"tissuemap": __version__, "torch": torch.__version__},
                  peak_rss_gib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
    (Path(job["out_dir"]) / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


# --- running the steps ---------------------------------------------------------------------------------------------

def run_measured(command: list[str], log_path: Path) -> dict:
    """Run ``command`` to completion, output to ``log_path``; its wall time, CPU time and peak RSS (``os.wait4``:
    this child and the children it waited for) and the machine's load average before and after (the machine may be
    shared: a loaded one slows both tools' threads)."""
    load_before = os.getloadavg()[0]
    with open(log_path, "w") as log:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        tail = log_path.read_text().splitlines()[-15:]
        raise RuntimeError(f"{' '.join(command[:3])}... failed (exit {process.returncode}); end of {log_path}:\n"
                           + "\n".join(tail))
    return {"wall_seconds": wall, "cpu_seconds": usage.ru_utime + usage.ru_stime,
            "peak_rss_gib": usage.ru_maxrss / 2**20, "load_average_1min": [load_before, os.getloadavg()[0]]}


def tissuemap_command(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "tissuemap", "-q", *arguments]


def run_tissuemap(step: str, job: dict, out_dir: Path, repeats: int = 1) -> dict:
    """Run tissuemap's ``step`` ``repeats`` times (same seed: the same numbers) and return the run of median whole-step
    time, with every run's timing under ``repeats``: on a shared machine one run can be slowed several-fold by other
    work, and tissuemap's runs are short enough to repeat."""
    runs = []
    for repeat in range(repeats):
        folder = out_dir / f"run{repeat + 1}" if repeats > 1 else out_dir
        folder.mkdir(parents=True, exist_ok=True)
        job_path = folder / "job.json"
        job_path.write_text(json.dumps({**job, "out_dir": str(folder)}, indent=2))
        measured = run_measured([sys.executable, str(Path(__file__).resolve()), "--worker", step, "--job",
                                 str(job_path)], folder / "log.txt")
        runs.append({**json.loads((folder / "result.json").read_text()), "measured": measured, "out_dir": str(folder)})
    chosen = sorted(runs, key=whole_step)[(len(runs) - 1) // 2]
    return {**chosen, "repeats": [{"seconds": run["seconds"], "iterations_per_second": run["iterations_per_second"],
                                   "measured": run["measured"]} for run in runs]}


def run_package(args: argparse.Namespace, step: str, options: list[str], out_dir: Path) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    command = [str(args.c2l_python), str(HERE / "c2l_runner.py"), step, *options, "--lr", str(args.lr),
               "--num-samples", str(args.num_samples), "--out-dir", str(out_dir)]
    measured = run_measured(command, out_dir / "log.txt")
    return {**json.loads((out_dir / "result.json").read_text()), "measured": measured, "out_dir": str(out_dir)}


def prepare_data(args: argparse.Namespace, workdir: Path, n_spots: int, n_genes: int, n_cells: int) -> dict:
    """Simulate (unless already there), QC the sample and filter the reference's genes; returns the paths."""
    data = workdir / "data"
    if not (data / "simulation.json").exists():
        subprocess.run(tissuemap_command(
            "simulate", "--outdir", str(data), "--seed", str(args.seed), "--n-samples", "1",
            "--n-spots", str(n_spots), "--n-genes", str(n_genes), "--n-cell-types", str(args.n_cell_types),
            "--n-cells", str(n_cells), "--n-batches", str(args.n_batches),
            "--n-cells-per-location", str(args.n_cells_per_location), "--detection-alpha", str(args.detection_alpha),
        ), check=True)
    qc = workdir / "qc"
    if not (qc / f"{SAMPLE}.qc.h5ad").exists():
        subprocess.run(tissuemap_command("qc", "--sample", SAMPLE, "--input", str(data / "samples" / SAMPLE / "outs"),
                                         "--outdir", str(qc)), check=True)
    reference = workdir / "reference"
    if not (reference / "reference.filtered.h5ad").exists():
        subprocess.run(tissuemap_command("filter-genes", "--reference", str(data / "reference.h5ad"), "--labels-key",
                                         LABELS_KEY, "--outdir", str(reference)), check=True)
    return {
        "spatial": str(qc / f"{SAMPLE}.qc.h5ad"),
        "reference": str(reference / "reference.filtered.h5ad"),
        "truth_abundance": str(data / "truth" / f"{SAMPLE}.cell_abundance.csv"),
        "truth_profiles": str(data / "truth" / "profiles.csv"),
    }


def median_seconds(command: list[str], repeats: int) -> dict:
    """Median and minimum wall time of ``command`` over ``repeats`` fresh processes (after one warm-up run)."""
    subprocess.run(command, check=True, capture_output=True)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    return {"median_seconds": statistics.median(times), "min_seconds": min(times), "repeats": repeats}


def measure_startup(args: argparse.Namespace) -> dict:
    script = Path(sys.executable).with_name("tissuemap")
    help_command = [str(script), "--help"] if script.exists() else [sys.executable, "-m", "tissuemap", "--help"]
    timed_import = "import time; t = time.perf_counter(); import {}; print(time.perf_counter() - t)"

    def import_seconds(python: Path, modules: str, repeats: int = 3) -> dict:
        values = [float(subprocess.run([str(python), "-c", timed_import.format(modules)], check=True,
                                       capture_output=True, text=True).stdout.split()[-1]) for _ in range(repeats)]
        return {"median_seconds": statistics.median(values), "min_seconds": min(values), "repeats": repeats}

    return {
        "tissuemap_help": {"command": " ".join(Path(part).name if i == 0 else part
                                               for i, part in enumerate(help_command)),
                           **median_seconds(help_command, 10)},
        "import_cell2location": import_seconds(args.c2l_python, "cell2location"),
        "import_tissuemap_mapping": import_seconds(Path(sys.executable),
                                                   "tissuemap.mapping, tissuemap.models.cell2location"),
    }


# --- accuracy ------------------------------------------------------------------------------------------------------

def read_table(path: str | Path):
    import pandas as pd

    table = pd.read_csv(path, index_col=0)
    table.index = table.index.astype(str)
    table.columns = table.columns.astype(str)
    return table


def pearson(x, y) -> float:
    import numpy as np

    return float(np.corrcoef(np.asarray(x, dtype=float).ravel(), np.asarray(y, dtype=float).ravel())[0, 1])


def mapping_accuracy(q05_path: Path, truth_path: str) -> dict:
    """Pearson of q05 with the true cells per spot (all spots and types), and the mean over types of the average
    precision of q05 for the presence of the type (types present in some spots and absent in others)."""
    import numpy as np
    from sklearn.metrics import average_precision_score

    q05 = read_table(q05_path)
    truth = read_table(truth_path).loc[q05.index, q05.columns]
    present = truth.to_numpy() > 0
    precisions = {
        cell_type: float(average_precision_score(present[:, f], q05[cell_type].to_numpy()))
        for f, cell_type in enumerate(q05.columns) if 0 < present[:, f].sum() < len(present)
    }
    return {
        "pearson_q05_vs_truth": pearson(q05.to_numpy(), truth.to_numpy()),
        "mean_average_precision": float(np.mean(list(precisions.values()))),
        "average_precision_per_type": precisions,
    }


def per_type_agreement(path_a: Path, path_b: Path) -> dict:
    """Per cell type, Pearson of two q05 tables over the spots they share."""
    a = read_table(path_a)
    b = read_table(path_b).loc[a.index, a.columns]
    per_type = {cell_type: pearson(a[cell_type], b[cell_type]) for cell_type in a.columns}
    values = list(per_type.values())
    return {"per_type": per_type, "min": min(values), "median": statistics.median(values),
            "types_at_least_target": sum(value >= AGREEMENT_TARGET for value in values), "n_types": len(values)}


def signature_accuracy(signatures_path: Path, profiles_path: str) -> dict:
    """Pearson of log signatures with the simulation's log expression profiles (genes x types)."""
    import numpy as np

    signatures = read_table(signatures_path)
    profiles = read_table(profiles_path).loc[signatures.index, signatures.columns]
    return {"pearson_log_vs_truth": pearson(np.log(signatures.to_numpy() + 1e-3), np.log(profiles.to_numpy() + 1e-3)),
            "mean_total_per_type": float(signatures.sum(axis=0).mean())}


# --- the comparison ------------------------------------------------------------------------------------------------

def whole_step(run: dict) -> float:
    return sum(run["seconds"][phase] for phase in PHASES)


def compare(args: argparse.Namespace, workdir: Path) -> dict:
    paths = prepare_data(args, workdir, args.n_spots, args.n_genes, args.n_cells)
    started = time.perf_counter()
    runs: dict = {}
    common = {"lr": args.lr, "seed": args.seed}
    regression_job = {**common, "reference": paths["reference"], "epochs": args.regression_epochs,
                      "batch_size": args.batch_size}
    runs["regression/tissuemap"] = run_tissuemap("regression", regression_job, workdir / "regression_tissuemap",
                                                 args.tissuemap_repeats)
    runs["regression/package"] = run_package(args, "regression", [
        "--reference", paths["reference"], "--labels-key", LABELS_KEY, "--batch-key", BATCH_KEY,
        "--covariate-keys", COVARIATE_KEY, "--epochs", str(args.regression_epochs), "--batch-size",
        str(args.batch_size), "--seed", str(args.seed)], workdir / "regression_package")
    signatures = {tool: Path(runs[f"regression/{tool}"]["out_dir"]) / "signatures.csv" for tool in TOOLS}

    def map_with(tool: str, signature_tool: str, seed: int, timed: bool = False) -> str:
        key = f"mapping/{tool}/signatures_{signature_tool}/seed{seed}"
        out_dir = workdir / f"mapping_{tool}_signatures_{signature_tool}_seed{seed}"
        if tool == "tissuemap":
            runs[key] = run_tissuemap("mapping", {
                "lr": args.lr, "seed": seed, "spatial": paths["spatial"], "signatures": str(signatures[signature_tool]),
                "n_cells_per_location": args.n_cells_per_location, "detection_alpha": args.detection_alpha,
                "steps": args.mapping_steps}, out_dir, args.tissuemap_repeats if timed else 1)
        else:
            runs[key] = run_package(args, "mapping", [
                "--spatial", paths["spatial"], "--signatures", str(signatures[signature_tool]),
                "--n-cells-per-location", str(args.n_cells_per_location), "--detection-alpha",
                str(args.detection_alpha), "--steps", str(args.mapping_steps), "--seed", str(seed)], out_dir)
        runs[key]["accuracy"] = mapping_accuracy(Path(runs[key]["out_dir"]) / "cell_abundance_q05.csv",
                                                 paths["truth_abundance"])
        return key

    seed = args.seed
    pairs = {}  # signature source -> (package run, tissuemap run): same signatures, same steps
    for signature_tool in ("tissuemap", "package") if args.mapping_signatures == "both" else ("tissuemap",):
        pairs[signature_tool] = (map_with("package", signature_tool, seed),
                                 map_with("tissuemap", signature_tool, seed, timed=True))
    if "package" not in pairs:  # tissuemap's mapping with the package's signatures: what the signatures change
        map_with("tissuemap", "package", seed)
    tissuemap_repeat = map_with("tissuemap", "tissuemap", seed + 1)
    package_repeat = map_with("package", "tissuemap", seed + 1) if args.package_seed_repeat else None

    def q05(key: str) -> Path:
        return Path(runs[key]["out_dir"]) / "cell_abundance_q05.csv"

    agreement = {f"tissuemap vs package, {source}'s signatures": per_type_agreement(q05(tm), q05(pkg))
                 for source, (pkg, tm) in pairs.items()}
    primary_package, primary_tissuemap = pairs["tissuemap"]
    agreement["tissuemap vs tissuemap, seeds differ"] = per_type_agreement(q05(primary_tissuemap),
                                                                           q05(tissuemap_repeat))
    if package_repeat is not None:
        agreement["package vs package, seeds differ"] = per_type_agreement(q05(primary_package), q05(package_repeat))
    signature_figures = {tool: signature_accuracy(path, paths["truth_profiles"]) for tool, path in signatures.items()}
    signature_figures["tissuemap vs package"] = per_type_agreement(signatures["tissuemap"], signatures["package"])

    return {
        "settings": {key: (str(value) if isinstance(value, Path) else value) for key, value in vars(args).items()
                     if key not in ("worker", "job")},
        "machine": machine(),
        "startup": measure_startup(args),
        "runs": runs,
        "pairs": {source: {"package": pkg, "tissuemap": tm} for source, (pkg, tm) in pairs.items()},
        "agreement": agreement,
        "signatures": signature_figures,
        "targets": targets(runs, pairs),
        "comparison_seconds": time.perf_counter() - started,
    }


def targets(runs: dict, pairs: dict) -> list[dict]:
    """The CPU targets, measured on the regression and on each mapping pair."""
    rows = []
    regression = runs["regression/package"], runs["regression/tissuemap"]
    steps = [("regression", *regression)] + [(f"mapping ({source}'s signatures)", runs[pkg], runs[tm])
                                           for source, (pkg, tm) in pairs.items()]
    for name, package, tissuemap in steps:
        kind = "regression" if name == "regression" else "mapping"
        speedup = whole_step(package) / whole_step(tissuemap)
        rows.append({"target": f"{name}: whole step, same steps", "needed": f">= {TARGETS[kind]:g}x faster",
                     "measured": speedup, "unit": "x", "met": speedup >= TARGETS[kind]})
        export = package["seconds"]["export"] / tissuemap["seconds"]["export"]
        rows.append({"target": f"{name}: posterior export", "needed": f">= {TARGETS['export']:g}x faster",
                     "measured": export, "unit": "x", "met": export >= TARGETS["export"]})
        if kind == "mapping":
            difference = (tissuemap["accuracy"]["pearson_q05_vs_truth"]
                          - package["accuracy"]["pearson_q05_vs_truth"])
            rows.append({"target": f"{name}: accuracy, Pearson q05 vs truth",
                         "needed": f">= package's - {ACCURACY_TOLERANCE}", "measured": difference,
                         "unit": "difference", "met": difference >= -ACCURACY_TOLERANCE})
    return rows


def machine() -> dict:
    info = {"nproc": os.cpu_count(), "load_average": os.getloadavg()}
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        info["cpu"] = next(line.split(":", 1)[1].strip() for line in cpuinfo.splitlines()
                           if line.startswith("model name"))
        meminfo = Path("/proc/meminfo").read_text()
        info["memory_gib"] = int(meminfo.split("MemTotal:")[1].split()[0]) / 2**20
    except (OSError, StopIteration, IndexError):
        pass
    return info


# --- memory scan ---------------------------------------------------------------------------------------------------

def memory_scan(args: argparse.Namespace, workdir: Path) -> dict:
    """tissuemap's mapping alone at each size: peak RSS, fitted by least squares as base + bytes per entry (spots x
    genes: the dense counts) + bytes per non-zero count (the sparse input and the objective's tables); with fewer than
    three sizes, base + bytes per entry only."""
    import anndata as ad
    import numpy as np

    rows = []
    for size in args.memory_sizes.split(","):
        n_spots, n_genes = (int(value) for value in size.lower().split("x"))
        folder = workdir / f"memory_{n_spots}x{n_genes}"
        n_cells = max(50 * args.n_cell_types, 2000)
        paths = prepare_data(args, folder, n_spots, n_genes, n_cells)
        signatures = folder / "signatures_mean"
        if not (signatures / "signatures.csv").exists():  # per-type averages: the mapping's memory is what counts
            subprocess.run(tissuemap_command("signatures", "--reference", paths["reference"], "--labels-key",
                                             LABELS_KEY, "--method", "mean", "--outdir", str(signatures)), check=True)
        run = run_tissuemap("mapping", {
            "lr": args.lr, "seed": args.seed, "spatial": paths["spatial"],
            "signatures": str(signatures / "signatures.csv"), "n_cells_per_location": args.n_cells_per_location,
            "detection_alpha": args.detection_alpha, "steps": args.memory_steps}, folder / "mapping")
        spatial = ad.read_h5ad(paths["spatial"])
        shared = spatial.var_names.intersection(read_table(signatures / "signatures.csv").index)
        nonzero = spatial[:, shared].X.nnz
        rows.append({"n_spots": run["n_spots"], "n_genes": run["n_genes"], "entries": run["n_spots"] * run["n_genes"],
                     "nonzero": nonzero, "nonzero_fraction": nonzero / (run["n_spots"] * run["n_genes"]),
                     "peak_rss_gib": run["measured"]["peak_rss_gib"],
                     "iterations_per_second": run["iterations_per_second"], "seconds": run["seconds"]})
    entries = np.array([row["entries"] for row in rows], dtype=float)
    nonzero = np.array([row["nonzero"] for row in rows], dtype=float)
    rss = np.array([row["peak_rss_gib"] for row in rows]) * 2**30
    columns = [np.ones_like(entries), entries] + ([nonzero] if len(rows) >= 3 else [])
    coefficients = np.linalg.lstsq(np.column_stack(columns), rss, rcond=None)[0]
    base, per_entry = coefficients[:2]
    per_nonzero = coefficients[2] if len(rows) >= 3 else 0.0
    largest = {}
    for density in MEMORY_DENSITIES:
        per_cell = per_entry + per_nonzero * density
        largest[f"{density:g}"] = {"bytes_per_entry": per_cell, "host_24_gib": (24 * 2**30 - base) / per_cell,
                                   "gpu_80_gb_same_cost": 80e9 / per_cell}
    return {
        "machine": machine(),
        "settings": {"steps": args.memory_steps, "n_cell_types": args.n_cell_types, "seed": args.seed},
        "runs": rows,
        "fit": {"base_gib": base / 2**30, "bytes_per_entry": per_entry, "bytes_per_nonzero": per_nonzero},
        "largest_entries_by_nonzero_fraction": largest,
    }


# --- report --------------------------------------------------------------------------------------------------------

def fmt(value: float, digits: int = 1) -> str:
    return f"{value:,.{digits}f}"


def markdown(report: dict) -> str:
    runs, settings = report["runs"], report["settings"]
    lines = []
    machine_info = report["machine"]
    lines.append(f"Machine: {machine_info.get('cpu', '?')}, {machine_info['nproc']} cores, "
                 f"{fmt(machine_info.get('memory_gib', 0))} GiB; load average at the end "
                 f"{', '.join(fmt(v, 2) for v in machine_info['load_average'])}.")
    regression = runs["regression/tissuemap"]
    mapping = runs[report["pairs"]["tissuemap"]["tissuemap"]]
    lines.append(f"Data: {mapping['n_spots']:,} spots x {mapping['n_genes']:,} genes x {mapping['n_types']} cell types "
                 f"(mapping); reference {regression['n_cells']:,} cells x {regression['n_genes']:,} genes, "
                 f"{settings['n_batches']} batches (regression). Regression {settings['regression_epochs']} epochs of "
                 f"minibatches of {settings['batch_size']:,} cells; mapping {settings['mapping_steps']:,} full-data "
                 f"steps; lr {settings['lr']}; N_cells_per_location {settings['n_cells_per_location']:g}, "
                 f"detection_alpha {settings['detection_alpha']:g}. The package exports with export_posterior and "
                 f"{settings['num_samples']} posterior draws; tissuemap with exact quantiles.")
    lines.append("")
    lines.append("| step | tool | import s | setup s | training s | export s | whole step s | it/s | peak RSS GiB | "
                 "process CPU s | load before, after |")
    lines.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    steps = [("regression", "regression/package", "regression/tissuemap")]
    steps += [(f"mapping, {source}'s signatures", pair["package"], pair["tissuemap"])
              for source, pair in report["pairs"].items()]
    for name, package_key, tissuemap_key in steps:
        package, tissuemap = runs[package_key], runs[tissuemap_key]
        for label, run in ((TOOLS["package"], package), (TOOLS["tissuemap"], tissuemap)):
            s = run["seconds"]
            lines.append(f"| {name} | {label} | {fmt(s['import'])} | {fmt(s['setup'], 2)} | {fmt(s['training'])} | "
                         f"{fmt(s['export'], 2)} | {fmt(whole_step(run))} | {fmt(run['iterations_per_second'], 2)} | "
                         f"{fmt(run['measured']['peak_rss_gib'], 2)} | {fmt(run['measured']['cpu_seconds'])} | "
                         f"{', '.join(fmt(v, 1) for v in run['measured']['load_average_1min'])} |")
        ratio = {phase: package["seconds"][phase] / tissuemap["seconds"][phase] for phase in PHASES}
        lines.append(f"| {name} | **speed-up** | {fmt(ratio['import'])}x | {fmt(ratio['setup'])}x | "
                     f"**{fmt(ratio['training'])}x** | **{fmt(ratio['export'])}x** | "
                     f"**{fmt(whole_step(package) / whole_step(tissuemap))}x** | "
                     f"{fmt(tissuemap['iterations_per_second'] / package['iterations_per_second'])}x | "
                     f"{fmt(package['measured']['peak_rss_gib'] / tissuemap['measured']['peak_rss_gib'], 2)}x less | "
                     f"{fmt(package['measured']['cpu_seconds'] / tissuemap['measured']['cpu_seconds'])}x | |")
    repeated = [(name, runs[key]) for name, _, key in steps if len(runs[key].get("repeats", [])) > 1]
    if repeated:
        lines.append("")
        lines.append("tissuemap's timed steps ran " + str(len(repeated[0][1]["repeats"])) + " times each (median run "
                     "above); whole step s of each run: " + "; ".join(
                         f"{name}: " + ", ".join(fmt(whole_step(r)) for r in run["repeats"]) for name, run in repeated)
                     + ".")
    lines.append("")
    lines.append("| mapping | signatures from | Pearson q05 vs truth | mean average precision | final -ELBO per spot |")
    lines.append("|---|---|---:|---:|---:|")
    for key, run in runs.items():
        if key.startswith("mapping/"):
            _, tool, source, seed = key.split("/")
            lines.append(f"| {TOOLS[tool]} ({seed.replace('seed', 'seed ')}) | {source.removeprefix('signatures_')} | "
                         f"{run['accuracy']['pearson_q05_vs_truth']:.4f} | "
                         f"{run['accuracy']['mean_average_precision']:.4f} | {fmt(run['final_loss_per_spot'])} |")
    lines.append("")
    lines.append(f"| per-type Pearson of q05 | min | median | types >= {AGREEMENT_TARGET} |")
    lines.append("|---|---:|---:|---:|")
    for name, figures in report["agreement"].items():
        lines.append(f"| {name} | {figures['min']:.4f} | {figures['median']:.4f} | "
                     f"{figures['types_at_least_target']} of {figures['n_types']} |")
    lines.append("")
    signatures = report["signatures"]
    lines.append("| signatures | Pearson of log signatures vs log truth | mean total per type |")
    lines.append("|---|---:|---:|")
    for tool in TOOLS:
        lines.append(f"| {TOOLS[tool]} | {signatures[tool]['pearson_log_vs_truth']:.4f} | "
                     f"{fmt(signatures[tool]['mean_total_per_type'])} |")
    between = signatures["tissuemap vs package"]
    lines.append(f"\nPer-type Pearson of tissuemap's signatures with the package's: min {between['min']:.4f}, "
                 f"median {between['median']:.4f}.")
    lines.append("")
    lines.append("| target (this CPU) | needed | measured | met |")
    lines.append("|---|---|---:|---|")
    for row in report["targets"]:
        measured = f"{row['measured']:.1f}x" if row["unit"] == "x" else f"{row['measured']:+.4f}"
        lines.append(f"| {row['target']} | {row['needed']} | {measured} | {'yes' if row['met'] else '**no**'} |")
    startup = report["startup"]
    lines.append("")
    lines.append(f"`{startup['tissuemap_help']['command']}`: {startup['tissuemap_help']['median_seconds']:.2f} s "
                 f"(median of {startup['tissuemap_help']['repeats']}); `import cell2location`: "
                 f"{startup['import_cell2location']['median_seconds']:.1f} s; `import tissuemap.mapping, "
                 f"tissuemap.models.cell2location`: {startup['import_tissuemap_mapping']['median_seconds']:.1f} s "
                 f"(medians of {startup['import_cell2location']['repeats']} fresh processes).")
    return "\n".join(lines)


def memory_markdown(report: dict) -> str:
    lines = ["| spots x genes | entries | non-zero | peak RSS GiB | it/s |", "|---|---:|---:|---:|---:|"]
    for row in report["runs"]:
        lines.append(f"| {row['n_spots']:,} x {row['n_genes']:,} | {row['entries']:,} | "
                     f"{row['nonzero_fraction']:.2f} | {row['peak_rss_gib']:.2f} | "
                     f"{row['iterations_per_second']:.2f} |")
    fit = report["fit"]
    lines.append(f"\nPeak RSS = {fit['base_gib']:.2f} GiB + {fit['bytes_per_entry']:.1f} bytes x spots x genes + "
                 f"{fit['bytes_per_nonzero']:.1f} bytes x non-zero counts.\n")
    lines.append("| non-zero fraction | bytes per entry | largest in 24 GiB host memory | in 80 GB, same cost |")
    lines.append("|---:|---:|---:|---:|")
    for density, largest in report["largest_entries_by_nonzero_fraction"].items():
        lines.append(f"| {density} | {largest['bytes_per_entry']:.1f} | {largest['host_24_gib'] / 1e9:.2f} G entries | "
                     f"{largest['gpu_80_gb_same_cost'] / 1e9:.2f} G entries |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        return run_worker(args.worker, args.job)
    if not args.memory_sizes and not args.c2l_python.exists():
        sys.exit(f"--c2l-python {args.c2l_python}: not found; create the package's environment first (see "
                 f"benchmarks/README.md)")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="compare_cell2location_"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        if args.memory_sizes:
            report = memory_scan(args, workdir)
            text = memory_markdown(report)
        else:
            report = compare(args, workdir)
            text = markdown(report)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print(text)
    if args.markdown is not None:
        args.markdown.write_text(text + "\n")
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
