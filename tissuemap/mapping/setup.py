"""The mapping's data set-up: the samples and the signatures subset to their shared genes and stacked into the
model's tensors (:class:`~tissuemap.models.cell2location.MappingData`), once, with how they map back to the samples."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from tissuemap.defaults import MAPPING_MIN_SHARED_GENES
from tissuemap.errors import InputError
from tissuemap.locations import shared_locations
from tissuemap.log import counted, logger
from tissuemap.mapping.data import SpatialSample


@dataclass
class MappingSetup:
    """The model's data and how it maps back to the samples.

    Attributes
    ----------
    samples
        The samples in fitting order (grouped by slide).
    rows
        Sample name -> its slice of locations in ``data``.
    sample_batch
        Sample name -> its batch index.
    batch_names
        Slide of each batch.
    genes
        Shared genes as the samples name them (``var_names``), in the model's order.
    cell_types
        Signature columns, in the model's order.
    data
        The tensors the model conditions on (:class:`~tissuemap.models.cell2location.MappingData`).
    priors
        Fixed hyper-parameters.
    gene_match
        How signatures and samples were matched (:class:`~tissuemap.genes.GeneMatch`).
    """

    samples: list[SpatialSample]
    rows: dict[str, slice]
    sample_batch: dict[str, int]
    batch_names: list[str]
    genes: list[str]
    cell_types: list[str]
    data: object
    priors: object
    gene_match: object
    seconds: float = 0.0


def _shared_spatial_genes(samples: list[SpatialSample]) -> pd.DataFrame:
    """``var`` of the first sample restricted to the genes every sample has (first sample's order)."""
    var = samples[0].adata.var
    common = var.index
    for sample in samples[1:]:
        common = common[common.isin(sample.adata.var_names)]
    if len(common) < len(var):
        logger.info("%d genes of %s are missing from another sample and left out",
                    len(var) - len(common), samples[0].name)
    return var.loc[common]


def detection_mean(
    total_counts: np.ndarray, n_cells: np.ndarray, batch_index: np.ndarray, signatures: np.ndarray
) -> float:
    """d̂, the prior mean of detection y_e (spec §3, as the package computes it).

    ``(mean over locations of total count / N̂) / (mean over types of Σ_g g_fg)``, the location mean taken per batch
    and then averaged over batches, so that every slide weighs the same.
    """
    per_location = total_counts / n_cells
    per_batch = [per_location[batch_index == batch].mean() for batch in range(batch_index.max() + 1)]
    return float(np.mean(per_batch) / signatures.sum(axis=1).mean())


def setup_mapping(
    samples: list[SpatialSample],
    signatures: pd.DataFrame,
    min_shared_genes: int = MAPPING_MIN_SHARED_GENES,
    device=None,
    signatures_name: str = "signatures",
    priors=None,
    sparse_counts: bool = False,
) -> MappingSetup:
    """Subset the samples and the signatures to their shared genes and stack the samples into the model's tensors.

    Samples on the same slide form one batch; batches are numbered in order of first appearance, and each batch's
    samples are placed together so that every batch is one contiguous block of locations.

    Parameters
    ----------
    samples
        QC'd samples (:func:`read_qc_sample`), names unique.
    signatures
        Genes × cell types (:func:`read_signatures`).
    min_shared_genes
        Fewest shared genes accepted.
    device
        ``torch.device`` for the tensors (CPU when ``None``).
    signatures_name
        How messages name the signatures (their file).
    priors
        :class:`~tissuemap.models.cell2location.MappingPriors`; the package's defaults when ``None``.
    sparse_counts
        Hold the counts as a torch sparse CSR tensor (what a minibatch fit reads), never dense; else dense.

    Raises
    ------
    InputError
        If sample names repeat, too few genes are shared, or a cell type's signature is zero on the shared genes.
    """
    import torch

    from tissuemap.genes import match_genes
    from tissuemap.models.cell2location import MappingData, MappingPriors

    started = time.perf_counter()
    names = [sample.name for sample in samples]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        paths = [sample.path for sample in samples if sample.name == repeated[0]]
        raise InputError(f"sample name {repeated[0]!r} is given twice ({', '.join(paths)}); map each sample once")
    batch_names = list(dict.fromkeys(sample.slide for sample in samples))
    ordered = sorted(samples, key=lambda sample: batch_names.index(sample.slide))
    locations = shared_locations(sample.locations for sample in ordered)

    spatial_var = _shared_spatial_genes(ordered)
    spatial_name = ordered[0].path if len(ordered) == 1 else f"the {len(ordered)} spatial samples"
    match = match_genes(pd.DataFrame(index=signatures.index), spatial_var, min_shared_genes,
                        reference_name=signatures_name, spatial_name=spatial_name)
    signature_matrix = signatures.loc[match.reference_names].to_numpy(dtype=np.float32).T  # (F, G)
    empty = np.flatnonzero(signature_matrix.sum(axis=1) == 0)
    if len(empty):
        raise InputError(
            f"{signatures_name}: cell type {signatures.columns[empty[0]]!r} has an all-zero signature on the "
            f"{match.n_shared} genes shared with the spatial data; remove it from the signatures"
        )

    n_locations = sum(sample.adata.n_obs for sample in ordered)
    counts = None if sparse_counts else np.empty((n_locations, match.n_shared), dtype=np.float32)
    sparse_blocks = []
    rows, sample_batch, start = {}, {}, 0
    n_cells, alpha, batch_index = (np.empty(n_locations, dtype=np.float32) for _ in range(3))
    sample_n_cells = np.empty(n_locations, dtype=np.float64)
    for sample in ordered:
        end = start + sample.adata.n_obs
        block = sample.adata[:, match.spatial_names].X
        if sparse_counts:
            sparse_blocks.append(sp.csr_matrix(block, dtype=np.float32))
        elif sp.issparse(block) and block.dtype == counts.dtype:
            block.toarray(out=counts[start:end])  # straight into place: no second dense copy of the sample
        else:
            counts[start:end] = block.toarray() if sp.issparse(block) else np.asarray(block)
        rows[sample.name] = slice(start, end)
        sample_batch[sample.name] = batch_names.index(sample.slide)
        n_cells[start:end], alpha[start:end] = sample.spot_cells_prior(), sample.detection_alpha
        # d̂ takes one N̂ per sample: with cell counts, their mean (a spot's count of 0 would dominate a mean of ratios)
        sample_n_cells[start:end] = n_cells[start:end].mean(dtype=np.float64)
        batch_index[start:end] = sample_batch[sample.name]
        start = end
    batch_index = batch_index.astype(np.int64)
    if sparse_counts:
        sparse = sp.vstack(sparse_blocks, format="csr")
        # the minibatch objective reads each stored entry as one count above zero: no zeros, no repeated entries
        sparse.sum_duplicates()
        sparse.eliminate_zeros()
        totals = np.asarray(sparse.sum(axis=1, dtype=np.float64)).ravel()
    else:
        totals = counts.sum(axis=1, dtype=np.float64)
    if (totals == 0).any():
        logger.warning("%d %s have no count on the shared genes; their detection sensitivity will be ~0",
                       int((totals == 0).sum()), locations.many)
    d_hat = detection_mean(totals, sample_n_cells, batch_index, signature_matrix.astype(np.float64))

    device = torch.device("cpu") if device is None else device
    if sparse_counts:
        from tissuemap.models.cell2location.minibatch import csr_counts

        counts_tensor = csr_counts(sparse.indptr, sparse.indices, sparse.data, sparse.shape, device)
    else:
        counts_tensor = torch.from_numpy(counts).to(device)
    data = MappingData(
        counts=counts_tensor,
        batch_index=torch.from_numpy(batch_index).to(device),
        signatures=torch.from_numpy(signature_matrix).to(device),
        n_cells_per_location=torch.from_numpy(n_cells).reshape(-1, 1).to(device),
        detection_alpha=torch.from_numpy(alpha).reshape(-1, 1).to(device),
        detection_mean=torch.tensor(d_hat, dtype=torch.float32, device=device),
    )
    logger.info(
        "Mapping %d %s (%s) x %d genes onto %d cell types in %s; detection mean d = %.4g",
        n_locations, locations.many, ", ".join(names), match.n_shared, len(signatures.columns), counted(len(batch_names), "batch"),
        d_hat,
    )
    return MappingSetup(
        samples=ordered, rows=rows, sample_batch=sample_batch, batch_names=batch_names,
        genes=list(match.spatial_names), cell_types=list(signatures.columns), data=data,
        priors=priors if priors is not None else MappingPriors(), gene_match=match,
        seconds=time.perf_counter() - started,
    )


