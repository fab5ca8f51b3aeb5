"""Benchmark of mapping at Visium HD scale: the memory plan against measured peak RSS, the cost curve of full-data
and minibatch fits, and one whole HD-like sample read, QC'd, mapped in one joint minibatch fit and reported.

Every tissuemap step runs as its own process (``python -m tissuemap ...``, the environment's package; set
PYTHONPATH to try a checkout); its peak RSS is the ``ru_maxrss`` that ``os.wait4`` reports for it, its times come
from its mapping_history.json. Three stages, each writing its rows to ``--json`` (merged with what is there):

``calibrate``
    Standard Visium-like samples (``tissuemap simulate``, one sample, ``--n-genes`` genes, ``--n-cell-types``
    types) of each ``--calibrate-spots`` size, QC'd and mapped on full data for a few steps (with
    ``--expected-expression``, the layers too): the plan's estimate (its log line) plus what the process held when
    it planned, against the measured peak RSS.
``curve``
    Visium HD-like samples (``simulate --visium-hd``) of each ``--curve-bins`` size, mapped for ``--curve-epochs``
    epochs on full data (only where the memory plan says it fits) and in minibatches of ``--batch-size`` bins: time
    per step and per epoch, peak RSS; then the memory model's extrapolation to ``--extrapolate-bins`` on an 80 GB GPU.
``hd``
    One HD-like sample of ``--hd-bins`` bins: simulate, qc, map (one joint minibatch fit, ``--hd-epochs`` epochs of
    ``--batch-size`` bins, early stopping) and report; peak RSS of every step, time per epoch, epochs to converge,
    and the accuracy of q05 against the true cells per bin (Pearson per bin, pooled, and mean average precision).

Usage::

    python benchmarks/bench_scale.py --workdir /tmp/scale calibrate --calibrate-spots 5000,20000,40000
    python benchmarks/bench_scale.py --workdir /tmp/scale curve --curve-bins 10000,50000,200000
    python benchmarks/bench_scale.py --workdir /tmp/scale hd --hd-bins 200000 --hd-epochs 30
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

GIB = 1 << 30
PLAN_LINE = re.compile(r"full data needs ([\d.]+) GiB")
MINIBATCH_PLAN_LINE = re.compile(r"(?:minibatch of|training on) [\d,]+ (?:spots|bins) per step(?:,)? (?:which )?needs ([\d.]+) GiB")
HELD_LINE = re.compile(r"this process holds ([\d.]+) GiB")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True, help="folder for the data and the outputs")
    parser.add_argument("--json", type=Path, default=None, help="results file [default: WORKDIR/bench_scale.json]")
    parser.add_argument("--n-genes", type=int, default=2000, help="genes of every simulated sample")
    parser.add_argument("--n-cell-types", type=int, default=20, help="cell types")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of every step")
    parser.add_argument("--seed", type=int, default=0, help="seed of the simulation and of the fits")
    parser.add_argument("--batch-size", type=int, default=10_000, help="bins per minibatch step")
    parser.add_argument("--calibrate-spots", default="5000,20000,40000", help="calibrate: sample sizes")
    parser.add_argument("--calibrate-steps", type=int, default=10, help="calibrate: full-data steps")
    parser.add_argument("--expected-expression", action="store_true",
                        help="calibrate: also write the expected-expression layers (slow: gzip of F layers)")
    parser.add_argument("--curve-bins", default="10000,50000,200000", help="curve: sample sizes (bins)")
    parser.add_argument("--curve-epochs", type=int, default=3, help="curve: epochs of every fit")
    parser.add_argument("--curve-modes", default="full data,minibatch", help="curve: the fits to run")
    parser.add_argument("--extrapolate-bins", type=int, default=1_000_000, help="curve: extrapolated size")
    parser.add_argument("--hd-bins", type=int, default=200_000, help="hd: bins of the sample")
    parser.add_argument("--hd-epochs", type=int, default=30, help="hd: most epochs (early stopping may end sooner)")
    parser.add_argument("--hd-lr", type=float, default=None, help="hd: Adam learning rate [default: tissuemap map's]")
    parser.add_argument("stage", choices=("calibrate", "curve", "hd"))
    return parser.parse_args(argv)


def run_step(args: argparse.Namespace, name: str, tissuemap_args: list[str]) -> dict:
    """Run ``python -m tissuemap ARGS`` as a child process; its wall time, peak RSS and log (kept in WORKDIR)."""
    log_path = args.workdir / f"{name}.log"
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    started = time.perf_counter()
    with open(log_path, "w") as log:
        child = subprocess.Popen([sys.executable, "-m", "tissuemap", *tissuemap_args], stdout=log, stderr=log,
                                 cwd=args.workdir, env=env)
        _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - started
    text = log_path.read_text()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{name} failed; see {log_path}:\n{text[-2000:]}")
    return {"step": name, "seconds": seconds, "peak_rss_gib": usage.ru_maxrss * 1024 / GIB, "log": text}


def simulate(args: argparse.Namespace, name: str, n_spots: int, visium_hd: bool) -> Path:
    """Simulate one sample (``--visium-hd``: 8 um bins) into WORKDIR/NAME, once; QC it; returns the QC'd h5ad."""
    qc_file = args.workdir / name / "qc" / "sample1" / "sample1.qc.h5ad"
    if qc_file.exists():
        return qc_file
    extra = ["--visium-hd", "--bin-size", "8"] if visium_hd else []
    run_step(args, f"{name}.simulate", ["simulate", "--outdir", name, "--n-samples", "1", "--n-spots", str(n_spots),
                                        "--n-genes", str(args.n_genes), "--n-cell-types", str(args.n_cell_types),
                                        "--n-cells", "2000", "--seed", str(args.seed), *extra])
    qc = run_step(args, f"{name}.qc", ["qc", "--sample", "sample1", "--input", f"{name}/samples/sample1/outs",
                                       "--outdir", f"{name}/qc/sample1", "--n-cells-per-location",
                                       "2" if visium_hd else "8", *(["--bin-size", "8"] if visium_hd else [])])
    print(f"{name}: qc {qc['seconds']:.0f} s, peak RSS {qc['peak_rss_gib']:.2f} GiB", flush=True)
    return qc_file


def map_step(args: argparse.Namespace, name: str, qc_file: Path, outdir: str, options: list[str]) -> dict:
    """``tissuemap map`` of one QC'd sample with the simulation's true profiles as signatures."""
    signatures = qc_file.parents[2] / "truth" / "profiles.csv"
    result = run_step(args, name, ["map", "--spatial", str(qc_file.relative_to(args.workdir)), "--signatures",
                                   str(signatures.relative_to(args.workdir)), "--threads", str(args.threads),
                                   "--seed", str(args.seed), "--outdir", outdir, *options])
    history = json.loads((args.workdir / outdir / "sample1" / "sample1.mapping_history.json").read_text())
    plan = MINIBATCH_PLAN_LINE.search(result["log"]) or PLAN_LINE.search(result["log"])
    held = HELD_LINE.search(result["log"])
    result.update(
        history_seconds=history["seconds"], steps=history["steps"], converged=history["converged"],
        iterations_per_second=history["iterations_per_second"], n_spots=history["n_spots"],
        n_genes=history["n_genes"], batch_size=history.get("batch_size"),
        plan_gib=float(plan.group(1)) if plan else None, held_gib=float(held.group(1)) if held else None,
    )
    return result


def planned_bytes(qc_file: Path, n_types: int, expected_expression: bool) -> float:
    """The plan's full-data estimate (GiB, CPU) for one QC'd sample mapped with ``n_types`` types, unrounded."""
    import anndata as ad

    from tissuemap.mapping.memory import MappingSize, full_data_bytes

    sample = ad.read_h5ad(qc_file, backed="r")
    size = MappingSize(sample.n_obs, sample.n_vars, n_types, 1, 50, int(sample.X.group["data"].shape[0]))
    return full_data_bytes(size, "cpu", expected_expression)["host"] / GIB


def calibrate(args: argparse.Namespace) -> list[dict]:
    rows = []
    for n_spots in (int(value) for value in args.calibrate_spots.split(",")):
        name = f"visium{n_spots}"
        qc_file = simulate(args, name, n_spots, visium_hd=False)
        fit = map_step(args, f"{name}.map", qc_file, f"{name}/map",
                       ["--max-epochs", str(args.calibrate_steps),
                        *(["--expected-expression"] if args.expected_expression else [])])
        planned = planned_bytes(qc_file, args.n_cell_types, args.expected_expression)
        estimate = fit["held_gib"] + planned
        rows.append({"stage": "calibrate", "spots": fit["n_spots"], "genes": fit["n_genes"],
                     "expected_expression": args.expected_expression,
                     "held_at_plan_gib": fit["held_gib"], "plan_gib": planned, "estimated_peak_gib": estimate,
                     "measured_peak_gib": fit["peak_rss_gib"], "ratio": fit["peak_rss_gib"] / estimate,
                     "seconds_per_step": 1 / fit["iterations_per_second"]})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def curve(args: argparse.Namespace) -> list[dict]:
    from tissuemap.mapping.memory import GIB as BYTES_PER_GIB
    from tissuemap.mapping.memory import MappingSize, full_data_bytes, minibatch_bytes

    rows, last = [], None
    for n_bins in (int(value) for value in args.curve_bins.split(",")):
        name = f"hd{n_bins}"
        qc_file = simulate(args, name, n_bins, visium_hd=True)
        for mode, options in (("full data", []), ("minibatch", ["--batch-size", str(args.batch_size)])):
            if mode not in args.curve_modes.split(","):
                continue
            try:
                fit = map_step(args, f"{name}.map.{mode.replace(' ', '')}", qc_file, f"{name}/map_{mode[0]}",
                               ["--max-epochs", str(args.curve_epochs), *options])
            except SystemExit as refused:  # the memory plan refused (one line) or the fit failed: recorded
                rows.append({"stage": "curve", "bins": n_bins, "mode": mode, "refused": str(refused)[-300:]})
                continue
            epoch_seconds = fit["history_seconds"]["training"] / fit["steps"]
            per_epoch_steps = 1 if mode == "full data" else -(-fit["n_spots"] // args.batch_size)
            rows.append({"stage": "curve", "bins": fit["n_spots"], "genes": fit["n_genes"], "mode": mode,
                         "seconds_per_epoch": epoch_seconds, "seconds_per_step": epoch_seconds / per_epoch_steps,
                         "peak_rss_gib": fit["peak_rss_gib"], "plan_gib": fit["plan_gib"], "held_gib": fit["held_gib"]})
            print(json.dumps(rows[-1]), flush=True)
            last = fit
    if last is not None:  # the same density as the largest sample, scaled to the extrapolated size on a GPU
        import anndata as ad

        sample = ad.read_h5ad(args.workdir / f"hd{n_bins}" / "qc" / "sample1" / "sample1.qc.h5ad", backed="r")
        density = sample.X.group["data"].shape[0] / sample.n_obs
        n_nonzero = int(density * args.extrapolate_bins)
        size = MappingSize(args.extrapolate_bins, args.n_genes, args.n_cell_types, 1, 50, n_nonzero)
        full = full_data_bytes(size, "cuda")["device"] / BYTES_PER_GIB
        batch = minibatch_bytes(size, args.batch_size, "cuda")["device"] / BYTES_PER_GIB
        rows.append({"stage": "extrapolation", "bins": args.extrapolate_bins, "genes": args.n_genes,
                     "nonzero": n_nonzero, "full_data_gpu_gib": full, "minibatch_gpu_gib": batch,
                     "batch_size": args.batch_size})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def hd(args: argparse.Namespace) -> list[dict]:
    import anndata as ad
    import numpy as np
    import pandas as pd
    from sklearn.metrics import average_precision_score

    name = f"hd{args.hd_bins}"
    started = time.perf_counter()
    qc_file = simulate(args, name, args.hd_bins, visium_hd=True)
    fit = map_step(args, f"{name}.map.hd", qc_file, f"{name}/map_hd",
                   ["--max-epochs", str(args.hd_epochs), "--batch-size", str(args.batch_size), "--early-stopping",
                    *(["--lr", str(args.hd_lr)] if args.hd_lr is not None else [])])
    inputs = args.workdir / name / "report_inputs"  # the report reads the QC's and the mapping's files from one folder
    inputs.mkdir(exist_ok=True)
    for folder in (args.workdir / name / "qc" / "sample1", args.workdir / name / "map_hd" / "sample1"):
        for path in folder.iterdir():
            if not (inputs / path.name).exists():
                (inputs / path.name).symlink_to(path)
    report = run_step(args, f"{name}.report", ["report", "sample", "--sample", "sample1", "--input-dir",
                                               str(inputs), "--outdir", f"{name}/report"])
    mapped = ad.read_h5ad(args.workdir / name / "map_hd" / "sample1" / "sample1.abundance.h5ad")
    truth = pd.read_csv(args.workdir / name / "truth" / "sample1.cell_abundance.csv", index_col=0)
    q05 = mapped.obsm["q05_cell_abundance_w_sf"]
    q05.columns = [column.removeprefix("q05cell_abundance_w_sf_") for column in q05.columns]
    truth = truth.loc[q05.index, q05.columns].to_numpy(dtype=float)
    estimate = q05.to_numpy(dtype=float)
    pearson = float(np.corrcoef(estimate.ravel(), truth.ravel())[0, 1])
    precision = float(np.mean([average_precision_score(truth[:, f] > 0, estimate[:, f])
                               for f in range(truth.shape[1]) if 0 < (truth[:, f] > 0).sum() < len(truth)]))
    row = {"stage": "hd", "bins": fit["n_spots"], "genes": fit["n_genes"], "cell_types": args.n_cell_types,
           "batch_size": args.batch_size, "lr": args.hd_lr, "epochs": fit["steps"], "converged": fit["converged"],
           "seconds_per_epoch": fit["history_seconds"]["training"] / fit["steps"],
           "map_peak_rss_gib": fit["peak_rss_gib"], "report_peak_rss_gib": report["peak_rss_gib"],
           "peak_rss_gib": max(fit["peak_rss_gib"], report["peak_rss_gib"]),
           "pearson_q05_vs_truth": pearson, "mean_average_precision": precision,
           "report_mib": sum(path.stat().st_size for path in (args.workdir / name / "report").rglob("*.html")) / 2**20,
           "wall_seconds": time.perf_counter() - started}
    print(json.dumps(row), flush=True)
    return [row]


def main(argv=None) -> int:
    args = parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    args.workdir = args.workdir.resolve()
    rows = {"calibrate": calibrate, "curve": curve, "hd": hd}[args.stage](args)
    path = args.json or args.workdir / "bench_scale.json"
    kept = [row for row in (json.loads(path.read_text()) if path.exists() else []) if row["stage"] not in
            {row["stage"] for row in rows}]
    path.write_text(json.dumps(kept + rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
