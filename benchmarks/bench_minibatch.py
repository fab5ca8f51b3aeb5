"""Minibatch mapping against the full-data fit on simulated data (`tissuemap simulate`, truth known).

One simulation (``--n-samples`` samples of ``--n-spots`` spots), through `tissuemap qc`, mapped jointly by
`tissuemap map` twice with the true profiles as signatures: on all the data every step (``--steps`` steps), and on
minibatches of a ``--batch-fraction`` of the spots (``--epochs`` passes over the data). Prints, as markdown, per cell
type the Pearson correlation of the two fits' q05, and for each fit the Pearson correlation of q05 with the true cells
(all spots x types, and per type averaged over types), the mean over types of the average precision of q05 at finding the spots where a type is
present, the median -ELBO of the last tenth of the training and its relative fall from the tenth before (medians:
a single value can be a spike of the noisy estimate), and the training seconds; ``--json`` writes the figures too.
With ``--time-steps K``, it also times K full-data steps and K minibatch epochs of the same data in turn (so that a
shared machine's load weighs on both alike) and reports the medians.

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
    parser.add_argument("--time-steps", type=int, default=0, help="also time this many steps and epochs, in turn")
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


def time_steps(root: Path, names: list[str], args: argparse.Namespace) -> dict:
    """Median seconds of a full-data step and of a minibatch epoch, timed in turn, one torch thread."""
    import time

    import torch

    from tissuemap.mapping import read_qc_sample, read_signatures, setup_mapping
    from tissuemap.mapping.minibatch import MinibatchSteps
    from tissuemap.models.cell2location import MappingObjective, initial_guide_parameters

    torch.set_num_threads(1)
    samples = [read_qc_sample(root / "qc" / f"{name}.qc.h5ad", 8.0) for name in names]
    signatures = read_signatures(root / "data" / "truth" / "profiles.csv")
    dense, sparse = (setup_mapping(samples, signatures, 100, sparse_counts=sparse) for sparse in (False, True))
    objective = MappingObjective(dense.data, dense.priors)
    parameters = initial_guide_parameters(dense.data, dense.priors).requires_grad_()
    optimizer = torch.optim.Adam([parameters], lr=args.lr)
    eps = torch.zeros(parameters.shape[1])
    steps = MinibatchSteps(sparse.data, sparse.priors, args.lr, torch.Generator().manual_seed(0))
    batch_size = math.ceil(args.batch_fraction * sparse.data.n_locations)

    def full_step():
        loss = objective.negative_elbo(parameters, eps.normal_())
        (parameters.grad,) = torch.autograd.grad(loss, [parameters])
        optimizer.step()

    def epoch():
        for ids in torch.randperm(sparse.data.n_locations).split(batch_size):
            steps.step(ids)

    seconds = {"full_data_step": [], "minibatch_epoch": []}
    for _ in range(args.time_steps + 1):  # the first of each warms up, not timed
        for name, function in (("full_data_step", full_step), ("minibatch_epoch", epoch)):
            started = time.perf_counter()
            function()
            seconds[name].append(time.perf_counter() - started)
    return {name: float(np.median(values[1:])) for name, values in seconds.items()}


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
            "mean_pearson_per_type": float(np.mean([np.corrcoef(q05[t], truth[t])[0, 1] for t in types])),
            "mean_average_precision": float(np.mean(precision)),
            "median_loss_last_tenth": float(last),
            "relative_fall_last_tenth": float((before - last) / abs(before)),
            "converged": history["converged"],
            "training_seconds": history["seconds"]["training"],
            "loss_values": len(history["loss"]),
        }
    if args.time_steps:
        result["seconds"] = time_steps(root, names, args)
    return result


def markdown(result: dict) -> str:
    between = result["pearson_between_fits"]
    lines = ["| fit | Pearson q05 vs truth | the same per type, mean | mean average precision | median -ELBO, last "
             "tenth | its fall from the tenth before | training s |", "|---|---|---|---|---|---|---|"]
    for kind, figures in result["fits"].items():
        lines.append(f"| {kind} | {figures['pearson_with_truth']:.4f} | {figures['mean_pearson_per_type']:.4f} | "
                     f"{figures['mean_average_precision']:.4f} | "
                     f"{figures['median_loss_last_tenth']:.6g} | {figures['relative_fall_last_tenth']:.2e} | "
                     f"{figures['training_seconds']:.0f} |")
    lines += ["", "| cell type | q05 Pearson, minibatch vs full |", "|---|---|"]
    lines += [f"| {cell_type} | {value:.4f} |" for cell_type, value in between.items()]
    lines.append(f"| lowest | {min(between.values()):.4f} |")
    if "seconds" in result:
        lines.append(f"\nmedian seconds: full-data step {result['seconds']['full_data_step']:.3f}, minibatch epoch "
                     f"{result['seconds']['minibatch_epoch']:.3f}")
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
