"""Reference cell-type signatures (spec §2): the expression of every gene in every cell type, cleaned of batch,
ambient RNA and technology effects by negative binomial regression (``method="nb"``), or plain per-type average
counts (``method="mean"``, for batch-free or non-UMI references).

The regression's Pyro module is :mod:`tissuemap.models.regression`; this package codes its design from AnnData
(:mod:`~tissuemap.signatures.design`), holds its counts on the device (:mod:`~tissuemap.signatures.data`), trains it in
the shared loop (:mod:`~tissuemap.signatures.fit`, :mod:`tissuemap.training`), exports the posterior
(:mod:`~tissuemap.signatures.export`) and runs the step (:mod:`~tissuemap.signatures.step`). The export follows the
cell2location package's layout:

- ``adata.varm['{k}_per_cluster_mu_fg']`` for k in means, stds, q05, q95: genes × types tables with columns
  ``{k}_per_cluster_mu_fg_{celltype}``;
- ``adata.uns['mod']``: ``factor_names`` (cell types), ``batch_names``, ``covariate_level_names``, ``settings``
  and ``post_sample_{k}`` (every site's posterior summary, name -> array).

Reproducibility: ``seed`` seeds Pyro's sampling (torch's global generator) and the minibatch order (a generator of
its own); training runs under ``torch.use_deterministic_algorithms`` (warn only), which makes the gradients of the
per-cell gathers add up in a fixed order. On a CPU the same seed, reference, options and thread count give bitwise
equal signatures, also across an interruption and ``--resume``; on a GPU, runs are expected to agree to about 1e-6
relative per step (cuBLAS reductions), not bit for bit.
"""

from tissuemap.signatures.data import DeviceCounts
from tissuemap.signatures.design import (
    ReferenceDesign,
    cell_groups,
    reference_design,
    stored_design,
    type_average_counts,
)
from tissuemap.signatures.export import expected_reference_counts, signature_table, store_signatures, varm_key
from tissuemap.signatures.fit import fit_regression
from tissuemap.signatures.step import estimate_signatures, write_signature_outputs

__all__ = [
    "DeviceCounts",
    "ReferenceDesign",
    "cell_groups",
    "estimate_signatures",
    "expected_reference_counts",
    "fit_regression",
    "reference_design",
    "signature_table",
    "store_signatures",
    "stored_design",
    "type_average_counts",
    "varm_key",
    "write_signature_outputs",
]
