"""The mapping step side by side on real data: tissuemap and the cell2location package (0.1.5), same machine, data,
signatures and number of steps.

The companion of ``compare_cell2location.py`` (whose data are simulated, with known cells per spot) for a real Visium
sample and a real single-cell reference, where there is no truth: it times the whole mapping step of both tools
(import, set-up, training, posterior export; each tool in its own process, the package in its own environment) and
reports how closely their maps agree, per cell type.

Preparation (not timed): ``tissuemap qc`` of the sample, ``tissuemap filter-genes`` and ``tissuemap signatures`` (the
regression) on the reference; the QC'd sample is written again with gene symbols as its names (the package matches
the sample's genes to the signatures' by name; tissuemap matches Ensembl ids or symbols itself), so that both tools
map the very same genes.

Usage (the repository's small real data: a crop of a breast cancer Visium section and a lymph node reference)::

    python benchmarks/compare_real_data.py --c2l-python /work/c2l-venv/bin/python \\
        --visium ../shared/data/visium/breast_crop --reference ../shared/data/reference/lymph_node_330cells.h5ad \\
        --mapping-steps 1000 --json real.json --markdown real.md
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from compare_cell2location import (
    LABELS_KEY,
    PHASES,
    machine,
    per_type_agreement,
    run_package,
    run_tissuemap,
    tissuemap_command,
    whole_step,
)

SAMPLE = "sample"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--visium", type=Path, required=True, help="Space Ranger outs/ folder of the sample")
    parser.add_argument("--reference", type=Path, required=True, help="annotated single-cell reference (.h5ad)")
    parser.add_argument("--labels-key", default=LABELS_KEY, help="obs column of the reference's cell types")
    parser.add_argument("--regression-epochs", type=int, default=250, help="epochs of tissuemap's regression")
    parser.add_argument("--mapping-steps", type=int, default=1000, help="full-data steps of both mappings")
    parser.add_argument("--lr", type=float, default=0.002, help="learning rate of both mappings")
    parser.add_argument("--n-cells-per-location", type=float, default=8.0, help="N_cells_per_location")
    parser.add_argument("--detection-alpha", type=float, default=20.0, help="detection_alpha")
    parser.add_argument("--num-samples", type=int, default=100,
                        help="posterior draws of the package's export_posterior (its default: 1000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of both mappings")
    parser.add_argument("--c2l-python", type=Path, default=Path(os.environ.get("C2L_PYTHON", "/work/c2l-venv/bin/python")),
                        help="Python of the cell2location package's virtual environment [env C2L_PYTHON]")
    parser.add_argument("--tissuemap-repeats", type=int, default=3, help="times tissuemap's mapping is run (median)")
    parser.add_argument("--workdir", type=Path, default=None, help="folder for every file, kept [default: temporary]")
    parser.add_argument("--json", type=Path, default=None, help="write every figure to this JSON file")
    parser.add_argument("--markdown", type=Path, default=None, help="write the markdown table to this file")
    return parser.parse_args(argv)


def prepare(args: argparse.Namespace, workdir: Path) -> dict:
    """QC'd sample with symbols as gene names, filtered reference, tissuemap's signatures (reused when present)."""
    import anndata as ad

    spatial = workdir / f"{SAMPLE}.symbols.h5ad"
    if not spatial.exists():
        subprocess.run(tissuemap_command("qc", "--sample", SAMPLE, "--input", str(args.visium), "--outdir",
                                         str(workdir / "qc")), check=True)
        adata = ad.read_h5ad(workdir / "qc" / f"{SAMPLE}.qc.h5ad")
        if "SYMBOL" in adata.var:
            adata.var["gene_ids"] = adata.var_names.astype(str)
            adata.var_names = adata.var["SYMBOL"].astype(str).to_numpy()
            adata = adata[:, ~adata.var_names.duplicated(keep=False)].copy()
        adata.write_h5ad(spatial)
    signatures = workdir / "signatures" / "signatures.csv"
    if not signatures.exists():
        subprocess.run(tissuemap_command("filter-genes", "--reference", str(args.reference), "--labels-key",
                                         args.labels_key, "--outdir", str(workdir / "reference")), check=True)
        subprocess.run(tissuemap_command("signatures", "--reference",
                                         str(workdir / "reference" / "reference.filtered.h5ad"), "--labels-key",
                                         args.labels_key, "--max-epochs", str(args.regression_epochs), "--device",
                                         "cpu", "--outdir", str(workdir / "signatures")), check=True)
    return {"spatial": str(spatial), "signatures": str(signatures)}


def compare(args: argparse.Namespace, workdir: Path) -> dict:
    paths = prepare(args, workdir)
    settings = {"n_cells_per_location": args.n_cells_per_location, "detection_alpha": args.detection_alpha,
                "steps": args.mapping_steps, "lr": args.lr, "seed": args.seed}
    runs = {
        "package": run_package(args, "mapping", [
            "--spatial", paths["spatial"], "--signatures", paths["signatures"], "--n-cells-per-location",
            str(args.n_cells_per_location), "--detection-alpha", str(args.detection_alpha), "--steps",
            str(args.mapping_steps), "--seed", str(args.seed)], workdir / "mapping_package"),
        "tissuemap": run_tissuemap("mapping", {**settings, **paths}, workdir / "mapping_tissuemap",
                                   args.tissuemap_repeats),
    }
    agreement = per_type_agreement(Path(runs["tissuemap"]["out_dir"]) / "cell_abundance_q05.csv",
                                   Path(runs["package"]["out_dir"]) / "cell_abundance_q05.csv")
    return {"settings": settings, "paths": paths, "runs": runs, "agreement": agreement, "machine": machine()}


def markdown(report: dict) -> str:
    runs = report["runs"]
    first = runs["tissuemap"]
    lines = [f"Real data: {first['n_spots']} spots x {first['n_genes']} genes x {first['n_types']} cell types, "
             f"{report['settings']['steps']} full-data steps, lr {report['settings']['lr']}; machine "
             f"{report['machine'].get('cpu', '?')}, {report['machine']['nproc']} cores.", "",
             "| tool | import s | setup s | training s | export s | whole step s | it/s | torch threads | "
             "load before, after |", "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for name in ("package", "tissuemap"):
        run = runs[name]
        load = ", ".join(f"{value:.1f}" for value in run["measured"]["load_average_1min"])
        lines.append(f"| {name} | " + " | ".join(f"{run['seconds'][phase]:.2f}" for phase in PHASES)
                     + f" | {whole_step(run):.1f} | {run['iterations_per_second']:.2f} | "
                     f"{run.get('torch_threads', '?')} | {load} |")
    package, ours = runs["package"], runs["tissuemap"]
    lines.append("| **speed-up** | " + " | ".join(
        f"{package['seconds'][phase] / max(ours['seconds'][phase], 1e-9):.1f}x" for phase in PHASES)
        + f" | **{whole_step(package) / whole_step(ours):.1f}x** | "
        f"{ours['iterations_per_second'] / package['iterations_per_second']:.1f}x | | |")
    agreement = report["agreement"]
    lines += ["", f"Per-type Pearson of q05, tissuemap vs package: min {agreement['min']:.4f}, median "
              f"{agreement['median']:.4f} ({agreement['types_at_least_target']} of {agreement['n_types']} types "
              ">= 0.95)."]
    if "repeats" in ours:
        lines.append("tissuemap's whole steps over its repeats: "
                     + ", ".join(f"{sum(r['seconds'][p] for p in PHASES):.1f} s" for r in ours["repeats"]) + ".")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        report = compare(args, args.workdir)
    else:
        with tempfile.TemporaryDirectory() as folder:
            report = compare(args, Path(folder))
    text = markdown(report)
    print(text)
    if args.markdown is not None:
        args.markdown.write_text(text)
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
