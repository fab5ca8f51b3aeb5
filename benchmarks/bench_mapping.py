"""Benchmark of ``tissuemap map`` training speed: iterations (full-data steps) per second of the cell2location model.

Draws one Visium-like sample at the cell2location tutorial's size (default 4,000 spots x 10,000 genes x 34 cell types)
from the model's own generative process, with about ``--umis-per-spot`` counts per spot, then times each stage of
the mapping on the chosen device: data set-up (gene matching, tensors), model set-up (objective tables, compilation
and CUDA graph capture where used), ``--steps`` training steps, and the export of the posterior to AnnData. Prints a
markdown table and a JSON object (also written to ``--json``); peak memory is the host's RSS and, on CUDA, the GPU's
peak allocation.

Usage::

    python benchmarks/bench_mapping.py --steps 300 --device cpu
    python benchmarks/bench_mapping.py --steps 3000 --device cuda                 # compiled objective + CUDA graph
    python benchmarks/bench_mapping.py --steps 3000 --device cuda --compile off --cuda-graph off   # plain eager

The tutorial trains 30,000 steps: its time is about ``30000 / iterations_per_second`` plus the set-up and export.
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
    parser.add_argument("--n-spots", type=int, default=4000, help="spots (locations)")
    parser.add_argument("--n-genes", type=int, default=10_000, help="genes shared by the sample and the signatures")
    parser.add_argument("--n-cell-types", type=int, default=34, help="cell types (signatures)")
    parser.add_argument("--umis-per-spot", type=float, default=10_000, help="mean counts per spot")
    parser.add_argument("--steps", type=int, default=300, help="training steps to time")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="training device")
    parser.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                        help="torch.compile the objective (auto: on a GPU only)")
    parser.add_argument("--cuda-graph", choices=("on", "off"), default="on",
                        help="replay training steps as a CUDA graph")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch [default: torch's]")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data and of the training")
    parser.add_argument("--json", type=Path, default=None, help="also write the JSON result to this file")
    return parser.parse_args(argv)


def draw_sample(args: argparse.Namespace):
    """A sample and signatures drawn from the cell2location generative process (spec §3), Visium-like counts."""
    import anndata as ad
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp

    rng = np.random.default_rng(args.seed)
    n_spots, n_genes, n_types = args.n_spots, args.n_genes, args.n_cell_types
    genes = [f"ENSG{index:011d}" for index in range(n_genes)]
    # per-cell expression: log-normal gene levels (orders of magnitude apart), type-to-type variation
    baseline = rng.lognormal(0.0, 1.7, size=n_genes)
    signatures = baseline * rng.lognormal(0.0, 0.7, size=(n_types, n_genes))
    signatures *= 3000 / signatures.sum(axis=1, keepdims=True)  # ~3,000 molecules per cell
    # ~8 cells per spot over a few types each
    abundance = rng.gamma(0.3, 1.0, size=(n_spots, n_types))
    abundance *= rng.gamma(8.0, 1.0, size=(n_spots, 1)) / abundance.sum(axis=1, keepdims=True)
    platform = rng.lognormal(0.0, 0.4, size=n_genes)
    detection = rng.gamma(20.0, 1 / 20.0, size=(n_spots, 1)) * args.umis_per_spot / (8 * 3000)
    mean = (abundance @ (signatures * platform) + 0.01) * detection
    counts = rng.poisson(rng.gamma(5.0, mean / 5.0)).astype(np.float32)  # NB with overdispersion alpha = 5
    adata = ad.AnnData(sp.csr_matrix(counts), obs=pd.DataFrame(index=[f"spot{i}-1" for i in range(n_spots)]),
                       var=pd.DataFrame(index=genes))
    adata.obsm["spatial"] = rng.uniform(0, 10_000, size=(n_spots, 2))
    table = pd.DataFrame(signatures.T, index=genes, columns=[f"type{f}" for f in range(n_types)])
    return adata, table


def run(args: argparse.Namespace) -> dict:
    import torch

    from tissuemap.mapping import (
        SpatialSample,
        export_mapping,
        fit_mapping,
        mapping_summaries,
        setup_mapping,
    )
    from tissuemap.models.device import resolve_device

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    started = time.perf_counter()
    adata, signatures = draw_sample(args)
    draw_seconds = time.perf_counter() - started
    density = adata.X.nnz / (adata.n_obs * adata.n_vars)

    sample = SpatialSample("bench", adata, n_cells_per_location=8.0, detection_alpha=20.0, slide="bench", path="bench")
    setup = setup_mapping([sample], signatures, min_shared_genes=1, device=device, signatures_name="signatures")
    compile_objective = {"auto": None, "on": True, "off": False}[args.compile]
    fit = fit_mapping(setup, args.steps, seed=args.seed, cuda_graph=args.cuda_graph == "on",
                      compile_objective=compile_objective)
    started = time.perf_counter()
    exported = export_mapping(setup, fit, summaries=mapping_summaries(setup, fit))
    export_seconds = time.perf_counter() - started
    assert exported["bench"].obsm["q05_cell_abundance_w_sf"].shape == (args.n_spots, args.n_cell_types)

    result = {
        "device": fit.device,
        "n_spots": args.n_spots,
        "n_genes": args.n_genes,
        "n_cell_types": args.n_cell_types,
        "nonzero_fraction": round(density, 4),
        "steps": args.steps,
        "timed_steps": fit.timed_steps,
        "compiled": fit.compiled,
        "cuda_graph": fit.cuda_graph,
        "iterations_per_second": round(fit.iterations_per_second, 3),
        "seconds_per_step": round(1 / fit.iterations_per_second, 5),
        "seconds": {
            "draw_data": round(draw_seconds, 2),
            "data_setup": round(setup.seconds, 2),
            "model_setup": round(fit.seconds["model_setup"], 2),
            "training": round(fit.seconds["training"], 2),
            "export": round(export_seconds, 2),
        },
        "estimated_seconds_for_30000_steps": round(30_000 / fit.iterations_per_second + fit.seconds["model_setup"], 1),
        "peak_host_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    if device.type == "cuda":
        result["peak_gpu_allocated_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return result


def markdown(result: dict) -> str:
    seconds = result["seconds"]
    header = ("| device | spots x genes x types | steps | it/s | compiled | CUDA graph | data setup s | "
              "model setup s | export s | 30k steps (est.) s | peak RSS GiB |")
    row = (f"| {result['device']} | {result['n_spots']} x {result['n_genes']} x {result['n_cell_types']} | "
           f"{result['steps']} | {result['iterations_per_second']} | {result['compiled']} | {result['cuda_graph']} | "
           f"{seconds['data_setup']} | {seconds['model_setup']} | {seconds['export']} | "
           f"{result['estimated_seconds_for_30000_steps']} | {result['peak_host_rss_gib']} |")
    return "\n".join([header, "|" + "---|" * (header.count("|") - 1), row])


def main(argv=None) -> int:
    args = parse_args(argv)
    result = run(args)
    print(markdown(result))
    text = json.dumps(result, indent=2)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
