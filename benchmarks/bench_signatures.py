"""Benchmark of ``tissuemap signatures`` training speed: epochs per second of the negative binomial regression.

Simulates a reference with ``tissuemap simulate`` (default 20,000 cells x 5,000 genes x 20 cell types, 8 batches,
two technologies; in a subprocess, so the peak memory reported is the training's), then fits the regression with
the package's settings (minibatches of 2,500 cells, lr 0.002, batch and technology as in the tutorial) for a few
epochs on the chosen device. Prints one markdown table row and a JSON object (also written to ``--json``):
epochs/s, seconds per epoch, training and export time, total time of the fit, peak memory (host RSS; on CUDA also
the GPU's peak allocation).

Usage::

    python benchmarks/bench_signatures.py --epochs 3 --device cpu
    python benchmarks/bench_signatures.py --epochs 20 --device cuda --workdir /tmp/bench   # reuses the simulation

The time of 250 epochs (the tutorial's) is about 250 / epochs_per_second; the first epoch includes warm-up, so
use several epochs for a stable figure.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--n-cells", type=int, default=20_000, help="reference cells")
    parser.add_argument("--n-genes", type=int, default=5_000, help="genes")
    parser.add_argument("--n-cell-types", type=int, default=20, help="cell types")
    parser.add_argument("--n-batches", type=int, default=8, help="10x reactions (about a third 5')")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs to time")
    parser.add_argument("--batch-size", type=int, default=2500, help="cells per minibatch")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="training device")
    parser.add_argument("--count-storage", choices=("auto", "dense", "sparse"), default="auto",
                        help="how the counts are held on the device")
    parser.add_argument("--seed", type=int, default=0, help="seed of the simulation and of the training")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="folder for the simulated data, reused when it already holds reference.h5ad "
                             "[default: a temporary folder]")
    parser.add_argument("--json", type=Path, default=None, help="also write the JSON result to this file")
    return parser.parse_args(argv)


def simulate(args: argparse.Namespace, folder: Path) -> Path:
    """Simulate the reference into ``folder`` (unless already there) with the ``tissuemap simulate`` command."""
    reference = folder / "reference.h5ad"
    if reference.exists():
        return reference
    command = [sys.executable, "-m", "tissuemap", "-q", "simulate", "--outdir", str(folder), "--seed", str(args.seed),
               "--n-cells", str(args.n_cells), "--n-genes", str(args.n_genes), "--n-cell-types", str(args.n_cell_types),
               "--n-batches", str(args.n_batches), "--n-samples", "1", "--n-spots", "100", "--confounding", "0.5"]
    subprocess.run(command, check=True)
    return reference


def run(args: argparse.Namespace, folder: Path) -> dict:
    import torch

    from tissuemap.reference import read_reference
    from tissuemap.signatures import estimate_signatures

    started = time.perf_counter()
    reference_path = simulate(args, folder)
    simulation_seconds = time.perf_counter() - started

    adata = read_reference(reference_path, "cell_type", batch_key="batch", covariate_keys=("technology",))
    started = time.perf_counter()
    record = estimate_signatures(adata, "cell_type", batch_key="batch", covariate_keys=("technology",),
                                 max_epochs=args.epochs, batch_size=args.batch_size, device=args.device,
                                 seed=args.seed, count_storage=args.count_storage)
    fit_seconds = time.perf_counter() - started
    result = {
        "device": record["device"],
        "n_cells": record["n_cells"],
        "n_genes": record["n_genes"],
        "n_types": record["n_types"],
        "n_batches": record["n_batches"],
        "epochs": record["epochs"],
        "steps_per_epoch": record["steps_per_epoch"],
        "batch_size": record["batch_size"],
        "count_storage": record["count_storage"],
        "torch_threads": torch.get_num_threads(),
        "epochs_per_second": record["epochs"] / record["training_seconds"],
        "seconds_per_epoch": record["training_seconds"] / record["epochs"],
        "training_seconds": record["training_seconds"],
        "export_seconds": record["export_seconds"],
        "fit_seconds": fit_seconds,
        "simulation_seconds": simulation_seconds,
        # ru_maxrss is in KiB on Linux
        "peak_host_memory_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }
    if record["device"].startswith("cuda"):
        result["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return result


def markdown_row(result: dict) -> str:
    gpu = f", GPU peak {result['peak_gpu_memory_gib']:.2f} GiB" if "peak_gpu_memory_gib" in result else ""
    return (
        f"| signatures (nb) | {result['n_cells']:,} cells x {result['n_genes']:,} genes x {result['n_types']} types, "
        f"{result['n_batches']} batches | {result['device']} ({result['torch_threads']} threads), "
        f"{result['count_storage']} counts | {result['epochs_per_second']:.3f} epochs/s "
        f"({result['seconds_per_epoch']:.2f} s/epoch, {result['epochs']} epochs; 250 epochs ~ "
        f"{250 * result['seconds_per_epoch'] / 60:.1f} min) | fit {result['fit_seconds']:.1f} s, export "
        f"{result['export_seconds']:.3f} s | host peak {result['peak_host_memory_gib']:.2f} GiB{gpu} |"
    )


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        result = run(args, args.workdir)
    else:
        with tempfile.TemporaryDirectory(prefix="bench_signatures_") as folder:
            result = run(args, Path(folder))
    print(markdown_row(result))
    text = json.dumps(result, indent=2)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
