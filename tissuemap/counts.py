"""Checks that a count matrix holds raw counts: finite, non-negative integers (stored as any numeric dtype)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from tissuemap.errors import InputError


def _first_bad(matrix, bad_values: np.ndarray) -> tuple[int, int]:
    """Row and column of the first flagged stored value of ``matrix`` (dense, or CSR: flags follow ``.data``)."""
    if sp.issparse(matrix):
        coo = matrix.tocoo()
        first = int(np.flatnonzero(bad_values)[0])
        return int(coo.row[first]), int(coo.col[first])
    row, col = np.unravel_index(int(np.flatnonzero(bad_values)[0]), matrix.shape)
    return int(row), int(col)


def check_raw_counts(matrix, source: str, row_names=None, col_names=None, what: str = "X",
                     remedy: str = "point it at the raw count matrix or layer") -> None:
    """Raise :class:`InputError` unless ``matrix`` holds raw counts.

    ``source`` names the file in the message; ``row_names``/``col_names`` (e.g. ``obs_names``/``var_names``) let the
    message point at the first offending entry; ``remedy`` says where the raw counts can be given.
    """
    if sp.issparse(matrix):
        matrix = sp.csr_matrix(matrix)
        values = matrix.data
    else:
        matrix = np.asarray(matrix)
        values = matrix.ravel()
    if not np.issubdtype(values.dtype, np.number):
        raise InputError(f"{source}: {what} is not numeric ({values.dtype}); give raw integer counts")
    if values.size == 0:
        return
    checks = (
        (~np.isfinite(values) if np.issubdtype(values.dtype, np.floating) else None, "NaN or infinite values"),
        (values < 0, "negative values"),
        (values != np.round(values) if np.issubdtype(values.dtype, np.floating) else None, "non-integer values"),
    )
    for bad, problem in checks:
        if bad is None or not bad.any():
            continue
        row, col = _first_bad(matrix, bad)
        where = ""
        if row_names is not None and col_names is not None:
            where = f" (first at {row_names[row]!r}, {col_names[col]!r}: {float(values[np.flatnonzero(bad)[0]])})"
        raise InputError(
            f"{source}: {what} holds {problem}{where}; tissuemap needs raw counts "
            f"(not normalised or log-transformed): {remedy}"
        )
