"""Finding a report's input files by their step-prefixed names, and reading the mapping results into tables."""

from __future__ import annotations

import json
from pathlib import Path

from tissuemap.errors import InputError

# The summary statistic of the posterior that the reports show: "at least this many cells" (spec §3).
ABUNDANCE_STAT = "q05"


def required_file(folder: Path, name: str, step: str) -> Path:
    """``folder / name``, or an :class:`InputError` saying which step writes it."""
    path = Path(folder) / name
    if not path.is_file():
        raise InputError(f"{path}: not found; run `tissuemap {step}` first, or give the --input-dir that holds it")
    return path


def read_json(path: Path) -> dict:
    """A JSON file written by a step; an :class:`InputError` if it is not valid JSON."""
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: not valid JSON ({err.msg}, line {err.lineno}); rerun the step that wrote it") from None


def abundance_table(adata, stat: str = ABUNDANCE_STAT):
    """Spots × cell types: a posterior summary of the cell abundance, columns named by cell type.

    Reads ``obsm['{stat}_cell_abundance_w_sf']`` (columns ``{stat}cell_abundance_w_sf_{celltype}``) in the order of
    ``uns['mod']['factor_names']``.
    """
    import pandas as pd

    cell_types = [str(name) for name in adata.uns["mod"]["factor_names"]]
    table = adata.obsm[f"{stat}_cell_abundance_w_sf"]
    columns = [f"{stat}cell_abundance_w_sf_{name}" for name in cell_types]
    return pd.DataFrame(table[columns].to_numpy(dtype=float), index=adata.obs_names.copy(), columns=cell_types)


def cell_type_proportions(abundance):
    """``abundance`` normalised per spot (rows sum to 1; a spot without any cell stays at 0)."""
    totals = abundance.sum(axis=1)
    return abundance.div(totals.where(totals > 0, 1.0), axis=0)


def read_abundance(path: Path, backed: bool = False):
    """The mapping result ``NAME.abundance.h5ad``; an :class:`InputError` if it lacks the abundance table.

    ``backed``: leave the count matrix on disk (the caller closes ``adata.file``).
    """
    import anndata as ad

    adata = ad.read_h5ad(path, backed="r" if backed else None)
    key = f"{ABUNDANCE_STAT}_cell_abundance_w_sf"
    if key not in adata.obsm or "factor_names" not in adata.uns.get("mod", {}):
        if backed:
            adata.file.close()
        raise InputError(f"{path}: no obsm[{key!r}] or uns['mod']['factor_names']; it is not an output of "
                         "`tissuemap map`, rerun that step")
    return adata
