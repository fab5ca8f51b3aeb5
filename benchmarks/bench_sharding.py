"""Sharded against joint mapping: what fitting a cohort's samples apart costs in accuracy, and what it saves.

tissuemap maps large cohorts by sharding samples: ``--mapping-mode per-sample`` (the default of ``tissuemap run``
and of the Nextflow pipeline) fits every sample on its own, ``slide`` every slide on its own, so that one fit holds
one shard's spots whatever the cohort's size, and shards run in parallel (one Nextflow task each). ``joint`` fits
all samples in one model: full-data training, which shares the gene-level platform effect m_g between samples.

This script simulates a cohort with ``tissuemap simulate`` (``--n-samples`` samples of ``--n-spots`` spots, known
cells per spot), runs ``tissuemap qc`` on each sample, and maps it twice with ``tissuemap map`` and the same
signatures (the simulation's true expression profiles, so that only the mapping differs), steps and seed:

- joint: one fit of all samples (one batch per sample);
- sharded: one fit per sample.

It reports, per sample and mode, the Pearson correlation of q05 cell abundance with the true cells per spot and the
mean over cell types of the average precision of q05 for a type's presence, and per mode the wall time, CPU time and
the largest peak RSS of a fit (each fit is its own process). A markdown table is printed and the JSON written with
``--json``.

Usage::

    python benchmarks/bench_sharding.py --json sharding.json
    python benchmarks/bench_sharding.py --n-samples 8 --n-spots 1000 --steps 5000 --workdir /tmp/sharding
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_cell2location import machine, mapping_accuracy, run_measured, tissuemap_command  # noqa: E402

MODES = ("joint", "sharded")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--n-samples", type=int, default=4, help="Visium samples of the cohort")
    parser.add_argument("--n-spots", type=int, default=500, help="spots per sample")
    parser.add_argument("--n-genes", type=int, default=1200, help="genes, 13 mitochondrial ones included")
    parser.add_argument("--n-cell-types", type=int, default=10, help="cell types")
    parser.add_argument("--steps", type=int, default=3000, help="training steps of every fit")
    parser.add_argument("--lr", type=float, default=0.002, help="learning rate of every fit")
    parser.add_argument("--n-cells-per-location", type=float, default=8.0,
                        help="the simulation's mean cells per spot and the mapping's N_cells_per_location")
    parser.add_argument("--seed", type=int, default=0, help="seed of the simulation and of every fit")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="folder for the data and the fits, kept (the simulation is reused) [default: temporary]")
    parser.add_argument("--json", type=Path, default=None, help="also write the JSON report to this file")
    return parser.parse_args(argv)


def prepare(args: argparse.Namespace, workdir: Path) -> list[str]:
    """Simulate the cohort and QC every sample (unless already there); returns the sample names."""
    data = workdir / "data"
    if not (data / "simulation.json").exists():
        run_measured(tissuemap_command(
            "simulate", "--outdir", str(data), "--seed", str(args.seed), "--n-samples", str(args.n_samples),
            "--n-spots", str(args.n_spots), "--n-genes", str(args.n_genes), "--n-cell-types", str(args.n_cell_types),
            "--n-cells", "1000", "--n-cells-per-location", str(args.n_cells_per_location),
        ), workdir / "simulate.log")
    samples = sorted(path.name for path in (data / "samples").iterdir())
    for sample in samples:
        if not (workdir / "qc" / f"{sample}.qc.h5ad").exists():
            run_measured(tissuemap_command("qc", "--sample", sample, "--input", str(data / "samples" / sample / "outs"),
                                           "--outdir", str(workdir / "qc")), workdir / f"qc_{sample}.log")
    return samples


def map_fit(args: argparse.Namespace, workdir: Path, samples: list[str], outdir: Path) -> dict:
    """One ``tissuemap map`` of ``samples`` together, measured from outside."""
    outdir.mkdir(parents=True, exist_ok=True)
    return run_measured(tissuemap_command(
        "map", "--spatial", *(str(workdir / "qc" / f"{sample}.qc.h5ad") for sample in samples),
        "--signatures", str(workdir / "data" / "truth" / "profiles.csv"),
        "--n-cells-per-location", str(args.n_cells_per_location), "--max-epochs", str(args.steps),
        "--lr", str(args.lr), "--seed", str(args.seed), "--device", "cpu", "--min-shared-genes", "1",
        "--outdir", str(outdir),
    ), outdir / "log.txt")


def run(args: argparse.Namespace, workdir: Path) -> dict:
    samples = prepare(args, workdir)
    shards = {"joint": [samples], "sharded": [[sample] for sample in samples]}
    report = {"date": date.today().isoformat(), "machine": machine(), "settings": vars(args) | {"workdir": str(workdir)},
              "modes": {}}
    for mode in MODES:
        fits = [map_fit(args, workdir, shard, workdir / mode / (shard[0] if len(shard) == 1 else "all"))
                for shard in shards[mode]]
        folders = {sample: workdir / mode / (sample if mode == "sharded" else "all") for sample in samples}
        accuracy = {
            sample: mapping_accuracy(folders[sample] / f"{sample}.cell_abundance_q05.csv",
                                     str(workdir / "data" / "truth" / f"{sample}.cell_abundance.csv"))
            for sample in samples
        }
        report["modes"][mode] = {
            "fits": len(fits),
            "spots_per_fit": max(len(shard) for shard in shards[mode]) * args.n_spots,
            "wall_seconds": sum(fit["wall_seconds"] for fit in fits),
            "cpu_seconds": sum(fit["cpu_seconds"] for fit in fits),
            "largest_peak_rss_gib": max(fit["peak_rss_gib"] for fit in fits),
            "accuracy": {sample: {key: value for key, value in figures.items() if key != "average_precision_per_type"}
                         for sample, figures in accuracy.items()},
            "fit_measurements": fits,
        }
    return report


def markdown(report: dict) -> str:
    settings = report["settings"]
    lines = [
        f"Cohort: {settings['n_samples']} simulated samples x {settings['n_spots']} spots, {settings['n_genes']} genes, "
        f"{settings['n_cell_types']} cell types; {settings['steps']} steps at lr {settings['lr']}, seed "
        f"{settings['seed']}, true profiles as signatures ({report['date']}, {report['machine'].get('cpu', '')}, "
        f"{report['machine']['nproc']} cores).",
        "",
        "| mode | fits | spots per fit | largest peak RSS GiB | wall s | CPU s | Pearson q05 vs truth, per sample "
        "| mean | mean average precision |",
        "|---|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for mode, figures in report["modes"].items():
        pearsons = [sample["pearson_q05_vs_truth"] for sample in figures["accuracy"].values()]
        precisions = [sample["mean_average_precision"] for sample in figures["accuracy"].values()]
        lines.append(
            f"| {mode} | {figures['fits']} | {figures['spots_per_fit']:,} | {figures['largest_peak_rss_gib']:.2f} "
            f"| {figures['wall_seconds']:.1f} | {figures['cpu_seconds']:.1f} | "
            f"{', '.join(f'{value:.4f}' for value in pearsons)} | {statistics.mean(pearsons):.4f} "
            f"| {statistics.mean(precisions):.4f} |"
        )
    joint, sharded = (report["modes"][mode]["accuracy"] for mode in MODES)
    differences = [sharded[sample]["pearson_q05_vs_truth"] - joint[sample]["pearson_q05_vs_truth"] for sample in joint]
    lines += ["", f"Sharded minus joint, Pearson per sample: {', '.join(f'{value:+.4f}' for value in differences)}."]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        report = run(args, args.workdir)
    else:
        with tempfile.TemporaryDirectory(prefix="tissuemap-sharding-") as folder:
            report = run(args, Path(folder))
    print(markdown(report))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
