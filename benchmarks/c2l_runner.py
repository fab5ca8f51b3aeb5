"""Run one step of the cell2location package (0.1.5) and time it: the package's half of the side-by-side comparison.

Runs inside the package's own virtual environment (see ``benchmarks/requirements-cell2location.txt``) and imports
nothing from tissuemap, so that each tool runs with its own dependencies. ``benchmarks/compare_cell2location.py``
starts it as a subprocess, once per step, and measures its peak memory from outside.

Two steps, as the package's tutorial runs them:

``regression``
    ``RegressionModel`` on an annotated reference (batch and categorical covariates as given), ``train(max_epochs,
    batch_size, train_size=1, lr)``, then ``export_posterior`` with ``num_samples`` posterior draws. Writes the
    signatures (posterior means of the per-cluster expression, genes x cell types) as a CSV.
``mapping``
    ``Cell2location`` on one Visium sample (raw counts in ``X``, mitochondrial genes already removed) and a
    signature CSV, restricted to their shared genes; ``train(max_epochs, batch_size=None, train_size=1, lr)`` (full
    data every step), then ``export_posterior`` with ``num_samples`` draws. Writes the q05 and mean cell abundance
    (spots x cell types) as CSVs.

Each run writes a JSON record: seconds per phase (import, setup, training, export), iterations per second, the
final training loss, sizes, versions and the process's own peak RSS.

Usage (from the package's environment)::

    c2l-venv/bin/python benchmarks/c2l_runner.py regression --reference ref.h5ad --labels-key cell_type \\
        --batch-key batch --covariate-keys technology --epochs 250 --out-dir out/
    c2l-venv/bin/python benchmarks/c2l_runner.py mapping --spatial sample.h5ad --signatures signatures.csv \\
        --n-cells-per-location 8 --steps 3000 --out-dir out/
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    steps = parser.add_subparsers(dest="step", required=True)

    regression = steps.add_parser("regression", help="reference signatures (RegressionModel)",
                                  formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    regression.add_argument("--reference", type=Path, required=True, help="annotated reference .h5ad, raw counts")
    regression.add_argument("--labels-key", required=True, help="obs column of the cell types")
    regression.add_argument("--batch-key", default=None, help="obs column of the batches [default: none]")
    regression.add_argument("--covariate-keys", default="", help="comma-separated categorical covariate columns")
    regression.add_argument("--epochs", type=int, default=250, help="passes over the cells")
    regression.add_argument("--batch-size", type=int, default=2500, help="cells per minibatch")

    mapping = steps.add_parser("mapping", help="cell abundance (Cell2location)",
                               formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    mapping.add_argument("--spatial", type=Path, required=True, help="Visium sample .h5ad, raw counts in X")
    mapping.add_argument("--signatures", type=Path, required=True, help="CSV, genes x cell types")
    mapping.add_argument("--n-cells-per-location", type=float, required=True, help="N_cells_per_location")
    mapping.add_argument("--detection-alpha", type=float, default=20.0, help="detection_alpha")
    mapping.add_argument("--steps", type=int, default=30_000, help="full-data training steps (max_epochs)")

    for step in (regression, mapping):
        step.add_argument("--lr", type=float, default=0.002, help="learning rate")
        step.add_argument("--num-samples", type=int, default=100,
                          help="posterior draws of export_posterior (the package's default is 1000)")
        step.add_argument("--seed", type=int, default=0, help="scvi.settings.seed")
        step.add_argument("--out-dir", type=Path, required=True, help="folder for the CSVs and result.json")
    return parser.parse_args(argv)


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def read_signatures(path: Path):
    import pandas as pd

    table = pd.read_csv(path, index_col=0)
    table.index = table.index.astype(str)
    return table


def run_regression(args: argparse.Namespace, seconds: dict) -> dict:
    started = time.perf_counter()
    import anndata as ad
    import pandas as pd
    import scvi
    from cell2location.models import RegressionModel

    seconds["import"] = time.perf_counter() - started

    started = time.perf_counter()
    scvi.settings.seed = args.seed
    reference = ad.read_h5ad(args.reference)
    covariates = [key for key in args.covariate_keys.split(",") if key]
    RegressionModel.setup_anndata(reference, batch_key=args.batch_key, labels_key=args.labels_key,
                                  categorical_covariate_keys=covariates or None)
    model = RegressionModel(reference)
    seconds["setup"] = time.perf_counter() - started

    started = time.perf_counter()
    model.train(max_epochs=args.epochs, batch_size=args.batch_size, train_size=1, lr=args.lr,
                enable_progress_bar=False)
    seconds["training"] = time.perf_counter() - started

    started = time.perf_counter()
    reference = model.export_posterior(reference, sample_kwargs={"num_samples": args.num_samples,
                                                                 "batch_size": args.batch_size})
    seconds["export"] = time.perf_counter() - started

    key = "means_per_cluster_mu_fg"
    names = [str(name) for name in reference.uns["mod"]["factor_names"]]
    signatures = pd.DataFrame(reference.varm[key][[f"{key}_{name}" for name in names]].to_numpy(),
                              index=reference.var_names, columns=names)
    signatures.index.name = "gene"
    signatures.to_csv(args.out_dir / "signatures.csv")
    steps_per_epoch = -(-reference.n_obs // args.batch_size)
    return {
        "n_cells": reference.n_obs,
        "n_genes": reference.n_vars,
        "n_types": len(names),
        "epochs": args.epochs,
        "steps": args.epochs * steps_per_epoch,
        "batch_size": args.batch_size,
        "epochs_per_second": args.epochs / seconds["training"],
        "iterations_per_second": args.epochs * steps_per_epoch / seconds["training"],
        "final_loss_per_cell": float(model.history["elbo_train"].iloc[-1, 0]) / reference.n_obs,
    }


def run_mapping(args: argparse.Namespace, seconds: dict) -> dict:
    started = time.perf_counter()
    import anndata as ad
    import numpy as np
    import scvi
    from cell2location.models import Cell2location

    seconds["import"] = time.perf_counter() - started

    started = time.perf_counter()
    scvi.settings.seed = args.seed
    spatial = ad.read_h5ad(args.spatial)
    signatures = read_signatures(args.signatures)
    # as in the package's tutorial: both restricted to their shared genes, in one order
    shared = np.intersect1d(spatial.var_names, signatures.index)
    spatial = spatial[:, shared].copy()
    signatures = signatures.loc[shared]
    spatial.obs["sample"] = "sample"
    Cell2location.setup_anndata(spatial, batch_key="sample")
    model = Cell2location(spatial, cell_state_df=signatures, N_cells_per_location=args.n_cells_per_location,
                          detection_alpha=args.detection_alpha)
    seconds["setup"] = time.perf_counter() - started

    started = time.perf_counter()
    model.train(max_epochs=args.steps, batch_size=None, train_size=1, lr=args.lr, enable_progress_bar=False)
    seconds["training"] = time.perf_counter() - started

    started = time.perf_counter()
    spatial = model.export_posterior(spatial, sample_kwargs={"num_samples": args.num_samples,
                                                             "batch_size": spatial.n_obs})
    seconds["export"] = time.perf_counter() - started

    names = [str(name) for name in spatial.uns["mod"]["factor_names"]]
    for stat, label in (("q05", "q05"), ("means", "mean")):
        table = spatial.obsm[f"{stat}_cell_abundance_w_sf"].copy()
        table.columns = names
        table.index.name = "barcode"
        table.to_csv(args.out_dir / f"cell_abundance_{label}.csv")
    return {
        "n_spots": spatial.n_obs,
        "n_genes": spatial.n_vars,
        "n_types": len(names),
        "steps": args.steps,
        "iterations_per_second": args.steps / seconds["training"],
        # the package logs the -ELBO of every full-data step (log x! included), summed over spots
        "final_loss_per_spot": float(model.history["elbo_train"].iloc[-1, 0]) / spatial.n_obs,
    }


def versions() -> dict:
    from importlib.metadata import version

    return {name: version(name) for name in ("cell2location", "scvi-tools", "pyro-ppl", "torch", "lightning",
                                             "anndata", "numpy")}


def main(argv=None) -> int:
    args = parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    seconds: dict = {}
    run = run_regression if args.step == "regression" else run_mapping
    result = run(args, seconds)
    import torch

    result.update(
        tool="cell2location package",
        step=args.step,
        lr=args.lr,
        seed=args.seed,
        num_samples=args.num_samples,
        export_method=f"export_posterior, {args.num_samples} posterior draws",
        seconds=seconds,
        torch_threads=torch.get_num_threads(),
        versions=versions(),
        peak_rss_gib=peak_rss_gib(),
    )
    (args.out_dir / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
