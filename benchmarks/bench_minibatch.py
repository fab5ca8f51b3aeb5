"""Minibatch mapping against the full-data fit on simulated data (`tissuemap simulate`, truth known).

One simulation (``--n-samples`` samples of ``--n-spots`` spots), through `tissuemap qc`, mapped jointly by
`tissuemap map` twice with the true profiles as signatures: on all the data every step (``--steps`` steps), and on
minibatches of a ``--batch-fraction`` of the spots (``--epochs`` passes over the data). Prints, as markdown, per cell
type the Pearson correlation of the two fits' q05, and for each fit the Pearson correlation of q05 with the true cells
(all spots x types), the mean over types of the average precision of q05 at finding the spots where a type is
present, the median -ELBO of the last tenth of the training and its relative fall from the tenth before (medians:
a single value can be a spike of the noisy estimate), and the training seconds; ``--json`` writes the figures too.

Usage::

    python benchmarks/bench_minibatch.py --steps 1000 --epochs 1000 --json minibatch.json
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

FITS = ("full", "minibatch")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--seed", type=int, default=21, help="simulation seed")
    parser.add_argument("--n-samples", type=int, default=2, help="samples, mapped jointly")
    parser.add_argument("--n-spots", type=int, default=2000, help="spots per sample")
    parser.add_argument("--n-genes", type=int, default=1000, help="genes")
    parser.add_argument("--n-cell-types", type=int, default=10, help="cell types")
    parser.add_argument("--steps", type=int, default=1000, help="full-data fit: training steps")
    parser.add_argument("--epochs", type=int, default=1000, help="minibatch fit: passes over the data")
    parser.add_argument("--batch-fraction", type=float, default=0.25, help="minibatch fit: share of the spots per step")
    parser.add_argument("--lr", type=float, default=0.02, help="Adam learning rate (both fits)")
    parser.add_argument("--workdir", type=Path, default=Path("bench_minibatch_data"), help="data and fits go here")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    return parser.parse_args(argv)


def tissuemap(*arguments: str) -> None:
    """Run a tissuemap command in a subprocess (one torch thread), stopping the benchmark if it fails."""
    command = [sys.executable, "-m", "tissuemap", *arguments]
    done = subprocess.run(command, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")


def simulate(args: argparse.Namespace) -> tuple[Path, list[str]]:
    """The simulation and its samples through `tissuemap qc` (reused when already there); returns its folder and the
    sample names."""
    root = args.workdir / f"seed{args.seed}"
    if not (root / "data" / "samples").is_dir():
        tissuemap("simulate", "--outdir", str(root / "data"), "--seed", str(args.seed), "--n-samples",
                  str(args.n_samples), "--n-spots", str(args.n_spots), "--n-genes", str(args.n_genes),
                  "--n-cell-types", str(args.n_cell_types))
    names = sorted(path.name for path in (root / "data" / "samples").iterdir())
    for name in names:
        if not (root / "qc" / f"{name}.qc.h5ad").is_file():
            tissuemap("qc", "--sample", name, "--input", str(root / "data" / "samples" / name / "outs"),
                      "--outdir", str(root / "qc"))
    return root, names


def fit(root: Path, names: list[str], args: argparse.Namespace, kind: str) -> Path:
    """Map the samples jointly, on all the data or on minibatches; returns the output folder."""
    outdir = root / kind
    options = ["--max-epochs", str(args.steps)]
    if kind == "minibatch":
        batch_size = math.ceil(args.batch_fraction * args.n_samples * args.n_spots)
        options = ["--max-epochs", str(args.epochs), "--batch-size", str(batch_size)]
    if not all((outdir / name / f"{name}.mapping_history.json").is_file() for name in names):
        tissuemap("map", "--spatial", *(str(root / "qc" / f"{name}.qc.h5ad") for name in names),
                  "--signatures", str(root / "data" / "truth" / "profiles.csv"), "--n-cells-per-location", "8",
                  "--lr", str(args.lr), "--device", "cpu", "--threads", "1", "--min-shared-genes", "100",
                  "--outdir", str(outdir), *options)
    return outdir


def average_precision(score: np.ndarray, present: np.ndarray) -> float:
    """Area under the precision-recall curve of ranking spots by ``score`` to find those where ``present``."""
    hits = present[np.argsort(-score, kind="stable")].astype(float)
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float((precision * hits).sum() / hits.sum())


def read_fit(outdir: Path, root: Path, names: list[str]) -> dict:
    """q05 of every spot (all samples), the truth in the same order, and the training history's figures."""
    q05, truth = [], []
    for name in names:
        table = pd.read_csv(outdir / name / f"{name}.cell_abundance_q05.csv", index_col=0)
        true = pd.read_csv(root / "data" / "truth" / f"{name}.cell_abundance.csv", index_col=0)
        q05.append(table)
        truth.append(true.loc[table.index, table.columns])
    history = json.loads((outdir / names[0] / f"{names[0]}.mapping_history.json").read_text())
    return {"q05": pd.concat(q05), "truth": pd.concat(truth), "history": history}


def run(args: argparse.Namespace) -> dict:
    root, names = simulate(args)
    fits = {kind: read_fit(fit(root, names, args, kind), root, names) for kind in FITS}
    types = list(fits["full"]["q05"].columns)
    result = {"settings": {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()},
              "pearson_between_fits": {}, "fits": {}}
    for cell_type in types:
        result["pearson_between_fits"][cell_type] = float(np.corrcoef(fits["full"]["q05"][cell_type],
                                                                      fits["minibatch"]["q05"][cell_type])[0, 1])
    for kind, figures in fits.items():
        q05, truth, history = figures["q05"], figures["truth"], figures["history"]
        precision = [average_precision(q05[t].to_numpy(), (truth[t] > 0).to_numpy()) for t in types]
        loss = np.asarray(history["loss"])
        tenth = max(1, len(loss) // 10)
        last, before = np.median(loss[-tenth:]), np.median(loss[-2 * tenth: -tenth])
        result["fits"][kind] = {
            "pearson_with_truth": float(np.corrcoef(q05.to_numpy().ravel(), truth.to_numpy().ravel())[0, 1]),
            "mean_average_precision": float(np.mean(precision)),
            "median_loss_last_tenth": float(last),
            "relative_fall_last_tenth": float((before - last) / abs(before)),
            "converged": history["converged"],
            "training_seconds": history["seconds"]["training"],
            "loss_values": len(history["loss"]),
        }
    return result


def markdown(result: dict) -> str:
    between = result["pearson_between_fits"]
    lines = ["| fit | Pearson q05 vs truth | mean average precision | median -ELBO, last tenth | its fall from the tenth "
             "before | training s |", "|---|---|---|---|---|---|"]
    for kind, figures in result["fits"].items():
        lines.append(f"| {kind} | {figures['pearson_with_truth']:.4f} | {figures['mean_average_precision']:.4f} | "
                     f"{figures['median_loss_last_tenth']:.6g} | {figures['relative_fall_last_tenth']:.2e} | "
                     f"{figures['training_seconds']:.0f} |")
    lines += ["", "| cell type | q05 Pearson, minibatch vs full |", "|---|---|"]
    lines += [f"| {cell_type} | {value:.4f} |" for cell_type, value in between.items()]
    lines.append(f"| lowest | {min(between.values()):.4f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    result = run(args)
    print(markdown(result))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
