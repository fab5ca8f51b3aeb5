"""QC plots shared by the two Pyro models: the training history and observed against expected counts."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import scipy.sparse as sp
from matplotlib.colors import LogNorm

# Entries of a count matrix drawn for the observed-vs-expected histogram: enough for a smooth picture, bounded memory.
MAX_HISTOGRAM_ENTRIES = 2_000_000


def plot_elbo_history(
    history: Mapping[str, Sequence[float]],
    path: str | os.PathLike,
    title: str,
    xlabel: str = "epoch",
) -> None:
    """Plot a training history (loss = -ELBO per epoch or step) to a PNG.

    Two panels: the whole history, and the same without its first 20 % so that convergence at the end is visible
    despite the large early values.

    Parameters
    ----------
    history
        Series name (e.g. ``"elbo"``) -> loss values in order, one per epoch or step.
    path
        PNG file to write.
    title
        Figure title (e.g. the sample name and the step).
    xlabel
        What one value stands for: ``"epoch"`` or ``"step"``.
    """

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, values in history.items():
        values = np.asarray(values, dtype=float)
        x = np.arange(1, len(values) + 1)
        skip = len(values) // 5
        axes[0].plot(x, values, label=name)
        axes[1].plot(x[skip:], values[skip:], label=name)
    axes[0].set_title("whole training")
    axes[1].set_title("without the first 20%")
    for axis in axes:
        axis.set_xlabel(xlabel)
        axis.set_ylabel("loss (-ELBO)")
    if len(history) > 1:
        axes[0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_log_histogram2d(x, y, path: str | os.PathLike, title: str, xlabel: str, ylabel: str) -> None:
    """2-D histogram of log10(1 + x) against log10(1 + y) (non-negative values), log colour scale, y = x drawn.

    Parameters
    ----------
    x, y
        Values of the same length (1-D arrays).
    path
        PNG file to write.
    title, xlabel, ylabel
        Figure title and what x and y are (the axes add "log10(1 + x)").
    """

    fig, axis = plt.subplots(figsize=(5.5, 5))
    x, y = np.log10(1 + np.asarray(x, dtype=float)), np.log10(1 + np.asarray(y, dtype=float))
    *_, image = axis.hist2d(x, y, bins=100, norm=LogNorm(), cmap="viridis")
    upper = max(x.max(initial=0), y.max(initial=0))
    axis.plot([0, upper], [0, upper], color="red", linewidth=0.8, label="y = x")
    axis.set_xlabel(f"{xlabel}, log10(1 + x)")
    axis.set_ylabel(f"{ylabel}, log10(1 + x)")
    axis.legend(loc="upper left")
    fig.colorbar(image, ax=axis, label="entries")
    axis.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_observed_vs_expected(observed, expected, path: str | os.PathLike, title: str, seed: int = 0) -> None:
    """Plot a 2-D histogram of observed against model-expected counts (both log10(1 + x)) to a PNG.

    Parameters
    ----------
    observed
        Observed counts, any shape (dense array or scipy sparse matrix).
    expected
        Expected counts under the fitted model, same shape as ``observed``.
    path
        PNG file to write.
    title
        Figure title.
    seed
        Seed of the random subset drawn when there are more than ``MAX_HISTOGRAM_ENTRIES`` entries.
    """

    observed = np.asarray(observed.toarray() if sp.issparse(observed) else observed, dtype=float).ravel()
    expected = np.asarray(expected.toarray() if sp.issparse(expected) else expected, dtype=float).ravel()
    if observed.shape != expected.shape:
        raise ValueError(f"observed ({observed.size} entries) and expected ({expected.size}) differ in size")
    if observed.size > MAX_HISTOGRAM_ENTRIES:
        chosen = np.random.default_rng(seed).choice(observed.size, MAX_HISTOGRAM_ENTRIES, replace=False)
        observed, expected = observed[chosen], expected[chosen]
    plot_log_histogram2d(expected, observed, path, title, xlabel="expected count", ylabel="observed count")
