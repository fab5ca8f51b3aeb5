"""Random draws shared by the simulator's modules: mean-one log-normal factors, smooth random fields over tissue
coordinates, and negative binomial count matrices drawn block by block into sparse form."""

from __future__ import annotations

from typing import Callable

import numpy as np
import scipy.sparse as sp

BLOCK_ENTRIES = 2**22  # dense entries drawn at once: ~32 MB per float64 temporary, whatever the matrix size


def lognormal_mean_one(rng: np.random.Generator, log_sd: float, size) -> np.ndarray:
    """Log-normal factors with mean 1 and standard deviation ``log_sd`` on the natural-log scale."""
    return np.exp(rng.normal(-0.5 * log_sd**2, log_sd, size))


def overdispersion(rng: np.random.Generator, rate: float, size) -> np.ndarray:
    """NB shape ``alpha = 1 / v**2`` with ``v ~ Exponential(rate)``, the model's prior; ``v`` floored at 0.01 so that
    near-Poisson genes do not get absurd shapes."""
    v = np.maximum(rng.exponential(1.0 / rate, size), 0.01)
    return 1.0 / v**2


def smooth_field(rng: np.random.Generator, coords: np.ndarray, length_scale: float, n_fields: int = 1,
                 n_waves: int = 16) -> np.ndarray:
    """Smooth random fields over 2-D ``coords`` (n x 2), shape (n, n_fields), each with mean ~0 and variance ~1.

    A sum of ``n_waves`` plane waves with random directions, phases and wavelengths near ``2 pi length_scale``
    (a random Fourier approximation of a Gaussian-process draw).
    """
    angle = rng.uniform(0, 2 * np.pi, (n_fields, n_waves))
    frequency = rng.uniform(0.7, 1.3, (n_fields, n_waves)) / length_scale
    phase = rng.uniform(0, 2 * np.pi, (n_fields, n_waves))
    wave_vectors = np.stack([np.cos(angle), np.sin(angle)], axis=-1) * frequency[..., None]  # fields x waves x 2
    waves = np.cos(np.einsum("nd,fwd->nfw", coords, wave_vectors) + phase)
    return waves.sum(axis=-1) * np.sqrt(2.0 / n_waves)


def negative_binomial_csr(rng: np.random.Generator, mean_of_rows: Callable[[slice], np.ndarray], n_rows: int,
                          shape: np.ndarray, dtype) -> sp.csr_matrix:
    """Counts ``X[r, g] ~ NB(mean, shape[g])`` (Gamma-Poisson; Var = mean + mean^2 / shape) as a CSR matrix.

    ``mean_of_rows(rows)`` returns the dense means of a block of rows; blocks keep memory flat for any size.
    """
    n_genes = len(shape)
    step = max(1, BLOCK_ENTRIES // n_genes)
    blocks = []
    for start in range(0, n_rows, step):
        mean = mean_of_rows(slice(start, min(start + step, n_rows)))
        counts = rng.poisson(rng.gamma(shape, mean / shape))
        blocks.append(sp.csr_matrix(counts.astype(dtype)))
    return sp.vstack(blocks, format="csr")


def random_barcodes(rng: np.random.Generator, n: int, suffix: str = "-1") -> np.ndarray:
    """``n`` distinct random 16-nucleotide barcodes with ``suffix`` (10x style, e.g. ``AAACCTGAGAAACCAT-1``)."""
    codes = rng.choice(4**16, size=n, replace=False)
    digits = (codes[:, None] >> (2 * np.arange(15, -1, -1))) & 3
    letters = np.frombuffer(b"ACGT", dtype="S1")[digits]
    return np.char.add(letters.view("S16").ravel().astype(str), suffix)
