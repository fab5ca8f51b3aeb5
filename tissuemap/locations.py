"""What a sample's locations are called in the texts users read: Visium ``spots``, or Visium HD ``bins`` of a size.

A sample is a Visium HD one when its scale factors give ``bin_size_um``: :mod:`tissuemap.io.spatial` sets it when it
reads a ``binned_outputs/`` folder, and it travels in ``uns['spatial'][sample]['scalefactors']`` of every h5ad the
steps write after (``NAME.qc.h5ad``, ``NAME.abundance.h5ad``) and in ``NAME.qc.json``. The figures draw squares on
the same rule (:func:`tissuemap.plotting.bins.bin_grid`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

BIN_SIZE_KEY = "bin_size_um"


@dataclass(frozen=True)
class Locations:
    """The words for a sample's locations: ``one`` and ``many`` ("spot", "spots"; "bin", "bins"), and ``kind`` for
    titles, with the bins' size ("spots"; "8 µm bins")."""

    one: str
    many: str
    kind: str


SPOTS = Locations("spot", "spots", "spots")
# samples of both kinds together (cell2location's own word)
MIXED = Locations("location", "locations", "locations")


def locations_of(bin_size_um: float | None) -> Locations:
    """Spots when ``bin_size_um`` is ``None`` (standard Visium, or an h5ad without it), else bins of that size."""
    if not bin_size_um:
        return SPOTS
    return Locations("bin", "bins", f"{float(bin_size_um):g} µm bins")


def bin_size_of(adata, library_id: str) -> float | None:
    """The ``bin_size_um`` of ``adata``'s library ``library_id`` (``None``: spots)."""
    return adata.uns.get("spatial", {}).get(library_id, {}).get("scalefactors", {}).get(BIN_SIZE_KEY)


def sample_locations(adata, library_id: str) -> Locations:
    """The :class:`Locations` of one sample's AnnData (see the module's description)."""
    return locations_of(bin_size_of(adata, library_id))


def shared_locations(each: Iterable[Locations]) -> Locations:
    """The words for samples taken together: theirs when they agree; bins of several sizes are "bins"; spots and
    bins together :data:`MIXED`."""
    kinds = set(each)
    if len(kinds) == 1:
        return kinds.pop()
    nouns = {(kind.one, kind.many) for kind in kinds}
    if len(nouns) == 1:
        one, many = nouns.pop()
        return Locations(one, many, many)
    return MIXED
