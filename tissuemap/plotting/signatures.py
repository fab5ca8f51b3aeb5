"""QC plots of the reference signatures: training history, observed vs expected counts, signatures vs averages."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np

from tissuemap.plotting.training import (
    MAX_HISTOGRAM_ENTRIES,
    plot_elbo_history,
    plot_log_histogram2d,
    plot_observed_vs_expected,
)


def plot_signatures_vs_average(signatures, averages, path: str | os.PathLike, title: str) -> None:
    """2-D histogram of every (gene, type) signature value against that type's average count, to a PNG.

    Points below the diagonal are expression the regression assigned to ambient RNA or batch effects.

    Parameters
    ----------
    signatures, averages
        Genes × types, same shape and order (arrays or DataFrames).
    path
        PNG file to write.
    title
        Figure title.
    """
    plot_log_histogram2d(np.ravel(averages), np.ravel(signatures), path, title,
                         xlabel="average count in the type's cells", ylabel="signature (posterior mean)")


def plot_signature_qc(adata, record: dict, folder: str | os.PathLike, prefix: str = "reference", *,
                      signatures, expected_counts: Callable[[np.ndarray], np.ndarray], averages=None,
                      seed: int = 0) -> None:
    """Write the QC plots of :func:`tissuemap.signatures.estimate_signatures`'s result into ``folder``.

    ``{prefix}.signatures_obs_vs_expected.png`` always (a random subset of cells, seeded by ``seed``, when the
    reference has more than ``MAX_HISTOGRAM_ENTRIES`` counts); for ``method="nb"`` also
    ``{prefix}.signatures_elbo.png`` and ``{prefix}.signatures_vs_average.png`` (the ``mean`` method has no training
    and its signatures are the averages).

    Parameters
    ----------
    signatures
        Genes × types table of the posterior mean signatures.
    expected_counts
        ``expected_counts(cells)``: cells × genes counts of the reference cells ``cells`` (positions) expected under
        the signatures.
    averages
        Genes × types average counts of each type's cells (for ``nb``).
    """
    import scipy.sparse as sp

    folder = Path(folder)
    method = record["method"]
    n_shown = min(adata.n_obs, max(1, MAX_HISTOGRAM_ENTRIES // max(adata.n_vars, 1)))
    cells = np.sort(np.random.default_rng(seed).choice(adata.n_obs, n_shown, replace=False))
    observed = adata.X[cells]
    plot_observed_vs_expected(
        observed.toarray() if sp.issparse(observed) else observed,
        expected_counts(cells),
        folder / f"{prefix}.signatures_obs_vs_expected.png",
        f"{prefix}: observed vs expected counts ({method}, {n_shown} cells)",
    )
    if method != "nb":
        return
    plot_elbo_history({"-ELBO": record["elbo"]}, folder / f"{prefix}.signatures_elbo.png",
                      f"{prefix}: signature regression, {record['epochs']} epochs on {record['device']}")
    plot_signatures_vs_average(signatures.to_numpy(), averages, folder / f"{prefix}.signatures_vs_average.png",
                               f"{prefix}: signatures vs per-type averages ({signatures.shape[1]} types)")
