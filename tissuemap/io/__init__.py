"""Readers that turn a spatial sample (Space Ranger ``outs/`` folder or ``.h5ad``) into one AnnData layout."""

from tissuemap.io.spatial import read_spatial_sample
from tissuemap.io.visium import read_spaceranger

__all__ = ["read_spaceranger", "read_spatial_sample"]
