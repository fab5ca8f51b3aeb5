"""The signatures exported: posterior summaries into the reference AnnData in the cell2location package's layout
(:func:`store_signatures`), read back as a genes × types table (:func:`signature_table`), and the counts they
predict for reference cells (:func:`expected_reference_counts`)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from tissuemap.signatures.design import ReferenceDesign, stored_design

SUMMARY_STATS = ("means", "stds", "q05", "q95")
SIGNATURE_SITE = "mu_fg"


def varm_key(stat: str) -> str:
    """``varm`` key of a posterior summary of the signatures, e.g. ``means_per_cluster_mu_fg``."""
    return f"{stat}_per_cluster_{SIGNATURE_SITE}"


def store_signatures(adata, design: ReferenceDesign, summaries: dict, mod: dict, settings: dict) -> None:
    """Write ``summaries`` (summary name -> genes × types array) to ``adata.varm['{k}_per_cluster_mu_fg']`` (columns
    ``{k}_per_cluster_mu_fg_{celltype}``) and ``mod`` with the fit's ``settings`` (None left out) to
    ``adata.uns['mod']``."""
    for stat, table in summaries.items():
        adata.varm[varm_key(stat)] = pd.DataFrame(
            np.asarray(table, dtype=np.float64), index=adata.var_names,
            columns=[f"{varm_key(stat)}_{name}" for name in design.cell_types],
        )
    mod["settings"] = {key: value for key, value in settings.items() if value is not None}
    adata.uns["mod"] = mod


def signature_table(adata) -> pd.DataFrame:
    """Genes × cell types: the posterior mean signatures (``inf_aver``), columns named by cell type."""
    names = [str(name) for name in adata.uns["mod"]["factor_names"]]
    key = varm_key("means")
    table = adata.varm[key][[f"{key}_{name}" for name in names]]
    table = pd.DataFrame(table.to_numpy(), index=adata.var_names.copy(), columns=names)
    table.index.name = "gene"
    return table


def expected_reference_counts(adata, cells: np.ndarray) -> np.ndarray:
    """Cells × genes: counts of the reference cells ``cells`` (positions) expected under the fitted signatures.

    ``nb``: the regression mean with every site at its posterior mean; ``mean``: the average of the cell's type.
    """
    mod = adata.uns["mod"]
    design = stored_design(adata)
    if mod["settings"]["method"] == "mean":
        return signature_table(adata).to_numpy().T[design.type_ids[cells]]
    import torch

    from tissuemap.models.regression import expected_counts

    means = {site: torch.as_tensor(np.asarray(value)) for site, value in mod["post_sample_means"].items()}
    expected = expected_counts(
        means["mu_fg"], means["y_e"], means["s_eg"], means.get("t_lg"),
        torch.as_tensor(design.type_ids[cells]), torch.as_tensor(design.batch_ids[cells]),
        torch.as_tensor(design.level_ids[cells]),
    )
    return expected.numpy()

