"""Accuracy benchmarks of two mapping options on simulated data (`tissuemap simulate`, truth known).

``early-stopping``: the package's fixed steps (``--steps``, 30,000 by default) against ``--early-stopping`` with the
given tolerances and windows: steps run, training seconds and Pearson correlation of q05 with the true cells per
spot, per simulation seed.

``cell-counts``: one global N̂ (the simulation's mean cells per spot) against per-spot cell counts
(``--cell-counts``) made from the true cells per spot with Poisson noise (as a nuclei count on the image would be):
Pearson of q05 and of the posterior mean with the truth, and of the total cells per spot.

Each simulation has ``--n-samples`` samples mapped jointly, signatures = the true profiles. Prints a markdown
table and writes the figures as JSON (``--json``).

Usage::

    python benchmarks/bench_features.py early-stopping --seeds 11 12 --json early.json
    python benchmarks/bench_features.py cell-counts --seeds 11 12 --steps 10000 --json counts.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("benchmark", choices=("early-stopping", "cell-counts"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[11, 12], help="simulation seeds")
    parser.add_argument("--n-spots", type=int, default=300, help="spots per sample")
    parser.add_argument("--n-genes", type=int, default=1000, help="genes")
    parser.add_argument("--n-cell-types", type=int, default=8, help="cell types")
    parser.add_argument("--n-samples", type=int, default=2, help="samples per simulation, mapped jointly")
    parser.add_argument("--steps", type=int, default=30_000, help="training steps (the most, with early stopping)")
    parser.add_argument("--lr", type=float, default=0.002, help="Adam learning rate")
    parser.add_argument("--tolerances", type=float, nargs="+", default=[1e-4], help="early-stopping tolerances")
    parser.add_argument("--windows", type=int, nargs="+", default=[2000], help="early-stopping windows")
    parser.add_argument("--skip-fixed", action="store_true",
                        help="early-stopping: leave out the fixed-steps fit (measured already)")
    parser.add_argument("--workdir", type=Path, default=Path("bench_features_data"), help="simulations go here")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    return parser.parse_args(argv)


def simulate(seed: int, args: argparse.Namespace) -> Path:
    """A simulated data set, its samples through `tissuemap qc`; returns its folder."""
    from click.testing import CliRunner

    from tissuemap.cli import main

    root = args.workdir / f"seed{seed}"
    if (root / "qc").is_dir():
        return root
    runner = CliRunner()
    result = runner.invoke(main, ["simulate", "--outdir", str(root / "data"), "--seed", str(seed),
                                  "--n-samples", str(args.n_samples), "--n-spots", str(args.n_spots),
                                  "--n-genes", str(args.n_genes), "--n-cell-types", str(args.n_cell_types)])
    assert result.exit_code == 0, result.output
    for sample in sorted(path.name for path in (root / "data" / "samples").iterdir()):
        result = runner.invoke(main, ["qc", "--sample", sample, "--input", str(root / "data" / "samples" / sample / "outs"),
                                      "--outdir", str(root / "qc")])
        assert result.exit_code == 0, result.output
    return root


def accuracy(result, root: Path) -> dict:
    """Pearson of q05 and of the mean with the true cells (all samples' spots x types together), and of the total
    cells per spot."""
    import numpy as np
    import pandas as pd

    q05, means, truth = [], [], []
    for name, adata in result.samples.items():
        true = pd.read_csv(root / "data" / "truth" / f"{name}.cell_abundance.csv", index_col=0)
        columns = result.setup.cell_types
        true = true.loc[adata.obs_names, columns].to_numpy(dtype=float)
        q05.append(adata.obsm["q05_cell_abundance_w_sf"].to_numpy())
        means.append(adata.obsm["means_cell_abundance_w_sf"].to_numpy())
        truth.append(true)
    q05, means, truth = (np.concatenate(parts) for parts in (q05, means, truth))
    return {
        "pearson_q05": float(np.corrcoef(q05.ravel(), truth.ravel())[0, 1]),
        "pearson_mean": float(np.corrcoef(means.ravel(), truth.ravel())[0, 1]),
        "pearson_total_cells": float(np.corrcoef(means.sum(1), truth.sum(1))[0, 1]),
    }


def mapped(root: Path, args: argparse.Namespace, **options):
    from tissuemap.mapping import map_samples

    started = time.perf_counter()
    result = map_samples(sorted((root / "qc").glob("*.qc.h5ad")), root / "data" / "truth" / "profiles.csv",
                         max_epochs=args.steps, lr=args.lr, device="cpu", min_shared_genes=100, progress=True,
                         **options)
    return result, time.perf_counter() - started


def early_stopping_rows(seed: int, root: Path, args: argparse.Namespace) -> list[dict]:
    from tissuemap.early_stopping import EarlyStopping

    n_cells = json.loads((root / "data" / "simulation.json").read_text())["parameters"]["n_cells_per_location"]
    rows = []
    if not args.skip_fixed:
        result, seconds = mapped(root, args, n_cells_per_location=n_cells)
        rows.append({"seed": seed, "setting": f"fixed {args.steps} steps", "steps": result.fit.steps,
                     "training_s": result.fit.seconds["training"], **accuracy(result, root)})
    for window in args.windows:
        for tolerance in args.tolerances:
            rule = EarlyStopping(tolerance, window)
            result, seconds = mapped(root, args, n_cells_per_location=n_cells, early_stopping=rule)
            rows.append({"seed": seed, "setting": f"early stopping, tolerance {tolerance:g}, window {window}",
                         "steps": result.fit.steps, "training_s": result.fit.seconds["training"],
                         **accuracy(result, root)})
    return rows


def cell_counts_rows(seed: int, root: Path, args: argparse.Namespace) -> list[dict]:
    import numpy as np
    import pandas as pd

    n_cells = json.loads((root / "data" / "simulation.json").read_text())["parameters"]["n_cells_per_location"]
    rng = np.random.default_rng(seed)
    counts = {}
    for path in sorted((root / "qc").glob("*.qc.h5ad")):
        name = path.name.removesuffix(".qc.h5ad")
        true = pd.read_csv(root / "data" / "truth" / f"{name}.cell_abundance.csv", index_col=0).sum(axis=1)
        noisy = pd.DataFrame({"barcode": true.index, "n_cells": rng.poisson(true.to_numpy())})
        counts[name] = root / f"{name}.cell_counts.csv"
        noisy.to_csv(counts[name], index=False)
    rows = []
    for setting, options in (("one global N̂", {}), ("per-spot cell counts (Poisson-noisy truth)",
                                                     {"cell_counts": counts})):
        result, seconds = mapped(root, args, n_cells_per_location=n_cells, **options)
        rows.append({"seed": seed, "setting": setting, "steps": result.fit.steps,
                     "training_s": result.fit.seconds["training"], **accuracy(result, root)})
    return rows


def main(argv=None) -> None:
    import torch

    args = parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for seed in args.seeds:
        root = simulate(seed, args)
        rows += (early_stopping_rows if args.benchmark == "early-stopping" else cell_counts_rows)(seed, root, args)
        print(json.dumps(rows[-1]), flush=True)
    print("| seed | setting | steps | training s | Pearson q05 | Pearson mean | Pearson total cells |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['seed']} | {row['setting']} | {row['steps']} | {row['training_s']:.0f} | {row['pearson_q05']:.4f} "
              f"| {row['pearson_mean']:.4f} | {row['pearson_total_cells']:.4f} |")
    if args.json:
        args.json.write_text(json.dumps({"arguments": {k: str(v) for k, v in vars(args).items()}, "rows": rows},
                                        indent=1) + "\n")


if __name__ == "__main__":
    main()
