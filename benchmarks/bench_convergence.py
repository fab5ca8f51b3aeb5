"""How many steps or epochs a mapping fit needs: accuracy against the true cells as the fit trains.

One fit of QC'd simulated samples (``tissuemap simulate`` then ``tissuemap qc``; standard Visium or Visium HD-like),
mapped jointly with the simulation's true profiles as signatures, full data (``--batch-size`` not given: one step on
all the data per iteration, as ``tissuemap map``) or in minibatches (``--batch-size N``: one iteration is an epoch,
every spot once), by the same objective, optimisers and guide noise as ``tissuemap map`` (the library's
``MappingObjective`` with torch's Adam, or ``MinibatchSteps``), one torch thread. At each of ``--marks`` iterations
it summarises the guide (exact log-normal q05 of w_sf, as the export does) and prints, as one JSON line: the Pearson
correlation of q05 with the true cells (all spots x types pooled, and per type averaged over types), the mean over
types of the average precision of q05 at finding the spots where a type is present, the mean q05, the median loss (the −ELBO
without its constant Σ log x!) of the last tenth of the iterations so far, and the seconds since training started.

Usage::

    python benchmarks/bench_convergence.py --qc sim/qc/sample1.qc.h5ad sim/qc/sample2.qc.h5ad --truth sim/truth \\
        --n-cells-per-location 8 --lr 0.02 --batch-size 1000 --marks 250,500,1000,2000
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from bench_minibatch import average_precision  # one definition for both benchmarks (run from benchmarks/)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--qc", type=Path, nargs="+", required=True, help="NAME.qc.h5ad files, mapped jointly")
    parser.add_argument("--truth", type=Path, required=True,
                        help="the simulation's truth folder: profiles.csv and NAME.cell_abundance.csv")
    parser.add_argument("--n-cells-per-location", type=float, default=8.0, help="N̂ of every spot")
    parser.add_argument("--batch-size", type=int, default=None, help="spots per step (minibatch); none: full data")
    parser.add_argument("--lr", type=float, default=0.002, help="Adam learning rate")
    parser.add_argument("--seed", type=int, default=0, help="seed of the guide's noise (batch order: seed + 1)")
    parser.add_argument("--marks", default="250,500,1000,2000", help="iterations at which the fit is summarised")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows to this file")
    return parser.parse_args(argv)


def accuracy(q05: np.ndarray, truth: np.ndarray) -> dict:
    """Pearson (pooled and per type) and mean average precision of ``q05`` against the true cells; types present in
    every spot or in none have no precision-recall curve and are left out of the mean."""
    types = range(truth.shape[1])
    return {
        "pearson": float(np.corrcoef(q05.ravel(), truth.ravel())[0, 1]),
        "pearson_per_type": float(np.mean([np.corrcoef(q05[:, f], truth[:, f])[0, 1] for f in types])),
        "mean_average_precision": float(np.mean([average_precision(q05[:, f], truth[:, f] > 0) for f in types
                                                 if 0 < (truth[:, f] > 0).sum() < len(truth)])),
        "mean_q05": float(q05.mean()),
    }


def trainer(setup, batch_size: int | None, lr: float, seed: int):
    """One iteration of the fit (a full-data step or an epoch) as a function returning its loss, and the guide."""
    import torch

    from tissuemap.mapping.minibatch import MinibatchSteps
    from tissuemap.models.cell2location import MappingObjective, initial_guide_parameters

    noise = torch.Generator().manual_seed(seed)
    if batch_size is None:  # fit_mapping's step on a CPU
        objective = MappingObjective(setup.data, setup.priors)
        parameters = initial_guide_parameters(setup.data, setup.priors).requires_grad_()
        optimizer = torch.optim.Adam([parameters], lr=lr)
        eps = torch.empty(parameters.shape[1])

        def full_data_step() -> float:
            loss = objective.negative_elbo(parameters, eps.normal_(generator=noise))
            (parameters.grad,) = torch.autograd.grad(loss, [parameters])
            optimizer.step()
            return float(loss.detach())

        return full_data_step, parameters.detach
    steps = MinibatchSteps(setup.data, setup.priors, lr, noise)
    order = torch.Generator().manual_seed(seed + 1)
    n_locations = setup.data.n_locations

    def epoch() -> float:
        ids = torch.randperm(n_locations, generator=order).split(batch_size)
        return float(sum(float(steps.step(batch)) * len(batch) for batch in ids) / n_locations)

    return epoch, steps.guide_parameters


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from tissuemap.mapping import mapping_summaries, read_qc_sample, read_signatures, setup_mapping
    from tissuemap.threads import use_threads

    use_threads(1)
    samples = [read_qc_sample(path, args.n_cells_per_location) for path in args.qc]
    setup = setup_mapping(samples, read_signatures(args.truth / "profiles.csv"), 100,
                          sparse_counts=args.batch_size is not None)
    truth = np.concatenate([
        pd.read_csv(args.truth / f"{sample.name}.cell_abundance.csv", index_col=0)
        .loc[sample.adata.obs_names, setup.cell_types].to_numpy(dtype=float) for sample in setup.samples])
    iterate, guide = trainer(setup, args.batch_size, args.lr, args.seed)
    marks = sorted(int(mark) for mark in args.marks.split(","))
    rows, losses, started = [], [], time.perf_counter()
    for mark in marks:
        while len(losses) < mark:
            losses.append(iterate())
        with torch.no_grad():
            q05 = mapping_summaries(setup, argparse.Namespace(guide_parameters=guide()))["q05"]["w_sf"]
        rows.append({"iterations": mark, "unit": "epoch" if args.batch_size else "step", **accuracy(q05, truth),
                     "median_loss_last_tenth": float(np.median(losses[-max(1, mark // 10):])),
                     "seconds": time.perf_counter() - started})
        print(json.dumps(rows[-1]), flush=True)
    if args.json is not None:
        settings = {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}
        settings["qc"] = [str(path) for path in args.qc]
        args.json.write_text(json.dumps({"settings": settings, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
