"""Synthetic gene annotation: Ensembl-shaped ids that cannot clash with real ones, numbered symbols, and the 13
protein-coding mitochondrial genes under their real symbols (so that ``MT-`` prefix rules find them)."""

from __future__ import annotations

import pandas as pd

MITOCHONDRIAL_SYMBOLS = (
    "MT-ND1", "MT-ND2", "MT-CO1", "MT-CO2", "MT-ATP8", "MT-ATP6", "MT-CO3",
    "MT-ND3", "MT-ND4L", "MT-ND4", "MT-ND5", "MT-ND6", "MT-CYB",
)  # fmt: skip


def gene_table(n_genes: int) -> pd.DataFrame:
    """Genes indexed by id (``ENSG9`` + 10 digits, matching ``^ENS[A-Z]*G\\d{11}$``; real human ids start ``ENSG0``).

    Columns: ``SYMBOL`` (``Gene00001``..., then the mitochondrial symbols, which come last as in 10x references)
    and ``mitochondrial`` (bool).
    """
    n_nuclear = n_genes - len(MITOCHONDRIAL_SYMBOLS)
    width = max(5, len(str(n_nuclear)))
    symbols = [f"Gene{i:0{width}d}" for i in range(1, n_nuclear + 1)] + list(MITOCHONDRIAL_SYMBOLS)
    ids = pd.Index([f"ENSG9{i:010d}" for i in range(1, n_genes + 1)], name="gene_id")
    return pd.DataFrame({"SYMBOL": symbols, "mitochondrial": [False] * n_nuclear + [True] * len(MITOCHONDRIAL_SYMBOLS)},
                        index=ids)
