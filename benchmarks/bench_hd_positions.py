"""Memory and time of reading a Visium HD 2 um bin folder whose positions parquet has a whole slide's bins.

A 6.5 mm capture area holds ~3,350 x 3,350 = 11 million 2 um bins; ``tissue_positions.parquet`` lists them all while
the filtered matrix holds the in-tissue ones (a disc of ``--tissue-bins`` bins). The matrix is kept small in genes
(one count per bin) so that the positions dominate.

    python benchmarks/bench_hd_positions.py make /tmp/hd_bench --side 3350 --tissue-bins 2500000
    python benchmarks/bench_hd_positions.py read /tmp/hd_bench

``read`` runs in its own process and prints the wall time of :func:`tissuemap.io.read_spaceranger` and the process's
peak RSS, with the RSS after the imports for reference.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np

N_GENES = 5


def barcodes(rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """``s_002um_RRRRR_CCCCC-1`` for each bin, built as fixed-width bytes without a Python loop."""
    text = np.frombuffer(b"s_002um_00000_00000-1", dtype=np.uint8)
    chars = np.broadcast_to(text, (len(rows), len(text))).copy()
    for place in range(5):
        chars[:, 12 - place] = ord("0") + (rows // 10**place) % 10
        chars[:, 18 - place] = ord("0") + (columns // 10**place) % 10
    return chars.view(f"S{len(text)}").ravel()


def make(folder: Path, side: int, tissue_bins: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    import scipy.sparse as sp

    from tissuemap.simulation.spaceranger import write_matrix_h5

    rows, columns = (grid.ravel().astype(np.int64) for grid in np.mgrid[0:side, 0:side])
    radius = np.sqrt(tissue_bins / np.pi)
    in_tissue = (rows - side / 2) ** 2 + (columns - side / 2) ** 2 < radius**2
    names = barcodes(rows, columns)
    (folder / "spatial").mkdir(parents=True, exist_ok=True)
    table = pa.table({
        "barcode": pa.array(names, type=pa.binary()).cast(pa.string()),
        "in_tissue": in_tissue.astype(np.int32),
        "array_row": rows.astype(np.int32),
        "array_col": columns.astype(np.int32),
        "pxl_row_in_fullres": 1000.0 + rows * 7.3,
        "pxl_col_in_fullres": 1000.0 + columns * 7.3,
    })
    pq.write_table(table, folder / "spatial" / "tissue_positions.parquet")
    n_tissue = int(in_tissue.sum())
    genes = np.random.default_rng(0).integers(0, N_GENES, n_tissue)
    counts = sp.csr_matrix((np.ones(n_tissue, np.float32), (np.arange(n_tissue), genes)), shape=(n_tissue, N_GENES))
    write_matrix_h5(folder / "filtered_feature_bc_matrix.h5", counts, names[in_tissue],
                    [f"ENSG{i:011d}" for i in range(N_GENES)], [f"GENE{i}" for i in range(N_GENES)], "bench", "3.0.0")
    (folder / "spatial" / "scalefactors_json.json").write_text(json.dumps({"bin_size_um": 2.0,
                                                                            "microns_per_pixel": 0.27}))
    print(f"{folder}: {side * side:,} positions, {n_tissue:,} bins in the matrix")


def read(folder: Path) -> None:
    import scanpy  # noqa: F401  (the reader's own import, counted in the baseline)

    from tissuemap.io import read_spaceranger

    imported_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    started = time.perf_counter()
    adata = read_spaceranger(folder, "bench")
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"{adata.n_obs:,} bins read in {seconds:.1f} s; peak RSS {peak:.2f} GiB (after imports {imported_rss:.2f} GiB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    maker = commands.add_parser("make")
    maker.add_argument("folder", type=Path)
    maker.add_argument("--side", type=int, default=3350, help="bins per side of the capture area")
    maker.add_argument("--tissue-bins", type=int, default=2_500_000, help="bins in the matrix (in tissue)")
    reader = commands.add_parser("read")
    reader.add_argument("folder", type=Path)
    args = parser.parse_args()
    if args.command == "make":
        make(args.folder, args.side, args.tissue_bins)
    else:
        read(args.folder)


if __name__ == "__main__":
    main()
