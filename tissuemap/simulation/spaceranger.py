"""Write one sample as Space Ranger would: ``outs/filtered_feature_bc_matrix.h5`` (10x HDF5, format version 2)
and ``outs/spatial/`` (tissue positions, scale factors, high- and low-resolution images).

Space Ranger 1.x writes ``tissue_positions_list.csv`` without a header; 2.0 and later ``tissue_positions.csv``
with one. Both list every capture-area spot with its ``in_tissue`` flag, in capture-area order, while the matrix
holds only tissue spots, barcodes sorted.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

GENOME = "GRCh38"
CHEMISTRY = "Spatial 3' v1"
POSITION_COLUMNS = ["in_tissue", "array_row", "array_col", "pxl_row_in_fullres", "pxl_col_in_fullres"]


def positions_file_name(spaceranger_version: str) -> str:
    """``tissue_positions_list.csv`` for Space Ranger 1.x, ``tissue_positions.csv`` from 2.0 on."""
    return "tissue_positions_list.csv" if spaceranger_version.startswith("1.") else "tissue_positions.csv"


def write_matrix_h5(path: Path, counts: sp.csr_matrix, barcodes, gene_ids, symbols, library_id: str,
                    spaceranger_version: str) -> None:
    """The 10x feature-barcode matrix: group ``matrix`` holding the genes x spots matrix in CSC form.

    ``counts`` is spots x genes CSR, which is the same arrays as genes x spots CSC.
    """
    counts = sp.csr_matrix(counts)
    counts.sort_indices()
    strings = {"compression": "gzip", "compression_opts": 4, "track_times": False}
    with h5py.File(path, "w", track_order=False) as h5:
        h5.attrs["chemistry_description"] = CHEMISTRY
        h5.attrs["filetype"] = "matrix"
        h5.attrs["library_ids"] = np.array([library_id], dtype="S")
        h5.attrs["original_gem_groups"] = np.array([1])
        h5.attrs["software_version"] = f"spaceranger-{spaceranger_version}"
        h5.attrs["version"] = 2
        matrix = h5.create_group("matrix", track_order=False)
        matrix.create_dataset("barcodes", data=np.asarray(barcodes, dtype="S"), **strings)
        matrix.create_dataset("data", data=counts.data.astype(np.int32), **strings)
        matrix.create_dataset("indices", data=counts.indices.astype(np.int64), **strings)
        matrix.create_dataset("indptr", data=counts.indptr.astype(np.int64), **strings)
        genes_by_spots = np.array([counts.shape[1], counts.shape[0]], dtype=np.int32)
        matrix.create_dataset("shape", data=genes_by_spots, track_times=False)
        features = matrix.create_group("features")
        n_genes = counts.shape[1]
        features.create_dataset("id", data=np.asarray(gene_ids, dtype="S"), **strings)
        features.create_dataset("name", data=np.asarray(symbols, dtype="S"), **strings)
        features.create_dataset("feature_type", data=np.full(n_genes, b"Gene Expression"), **strings)
        features.create_dataset("genome", data=np.full(n_genes, GENOME.encode()), **strings)
        features.create_dataset("_all_tag_keys", data=np.array([b"genome"]), track_times=False)


def write_spaceranger_outs(outs: Path, counts: sp.csr_matrix, barcodes, genes: pd.DataFrame, positions: pd.DataFrame,
                           scalefactors: dict, images: dict[str, np.ndarray], library_id: str,
                           spaceranger_version: str) -> None:
    """Write ``outs/`` of one sample.

    Parameters
    ----------
    counts, barcodes
        Tissue spots x genes UMI counts and the spots' barcodes (in the matrix's order).
    genes
        Indexed by gene id, with ``SYMBOL``.
    positions
        Every capture-area spot, indexed by barcode, with :data:`POSITION_COLUMNS`.
    images
        RGB pictures by resolution, ``hires`` and ``lowres``, saved as ``tissue_{resolution}_image.png``.
    """
    from PIL import Image

    spatial = outs / "spatial"
    spatial.mkdir(parents=True, exist_ok=True)
    write_matrix_h5(outs / "filtered_feature_bc_matrix.h5", counts, barcodes, genes.index, genes["SYMBOL"], library_id,
                    spaceranger_version)
    header = not spaceranger_version.startswith("1.")
    positions[POSITION_COLUMNS].to_csv(spatial / positions_file_name(spaceranger_version), header=header,
                                       index_label="barcode")
    (spatial / "scalefactors_json.json").write_text(json.dumps(scalefactors, indent=4))
    for resolution, picture in images.items():
        Image.fromarray(picture).save(spatial / f"tissue_{resolution}_image.png")
