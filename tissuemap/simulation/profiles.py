"""Cell types and their true expression profiles (expected molecules per cell, in reference units).

Types come in lineages of about four. A type's log expression of each gene is a log-normal baseline shared by all
types, plus type-level noise, plus a lineage fold change on the lineage's marker genes, plus a larger fold change
on the type's own markers. Rows are scaled to the type's RNA content, of which a few per cent come from the 13
mitochondrial genes.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tissuemap.simulation.parameters import MIN_MARKERS_PER_GROUP, SimulationParameters
from tissuemap.simulation.sampling import lognormal_mean_one

RARE, UBIQUITOUS, ZONE = "rare", "ubiquitous", "zone"


def zone_names(n_zones: int) -> list[str]:
    """``zone1``, ``zone2``, ..."""
    return [f"zone{z + 1}" for z in range(n_zones)]


def cell_type_table(params: SimulationParameters, rng: np.random.Generator) -> pd.DataFrame:
    """Cell types indexed by name (``L1_T1``: lineage 1, type 1), with their spatial role.

    Columns: ``lineage`` (int, from 1), ``spatial_role`` (``rare``: a few dozen reference cells and a few spots;
    ``ubiquitous``: every zone; ``zone``: one zone only) and ``home_zone`` (zone name for ``zone`` types, else "").
    """
    n_types = params.n_cell_types
    lineages = np.array_split(np.arange(n_types), params.n_lineages)  # consecutive types, near-equal groups
    lineage_of_type = np.concatenate([np.full(len(members), lineage) for lineage, members in enumerate(lineages)])
    names = [f"L{lineage + 1}_T{k + 1}" for lineage, members in enumerate(lineages) for k in range(len(members))]
    n_rare = max(1, round(n_types / 12))
    n_ubiquitous = max(1, round(n_types / 6))
    roles = np.array([RARE] * n_rare + [UBIQUITOUS] * n_ubiquitous + [ZONE] * (n_types - n_rare - n_ubiquitous))
    roles = roles[rng.permutation(n_types)]
    home_zone = np.full(n_types, "", dtype=object)
    zone_types = np.flatnonzero(roles == ZONE)
    # every zone gets a zone-specific type before any gets a second one
    zones = zone_names(params.n_zones)
    home_zone[rng.permutation(zone_types)] = [zones[i % params.n_zones] for i in range(len(zone_types))]
    return pd.DataFrame(
        {"lineage": lineage_of_type + 1, "spatial_role": roles, "home_zone": home_zone},
        index=pd.Index(names, name="cell_type"),
    )


def expression_profiles(genes: pd.DataFrame, cell_types: pd.DataFrame, params: SimulationParameters,
                        rng: np.random.Generator) -> pd.DataFrame:
    """True expected molecules per cell, genes x types (index: gene ids), at reference detection 1 in 3' chemistry."""
    n_types = len(cell_types)
    nuclear = np.flatnonzero(~genes["mitochondrial"].to_numpy())
    mitochondrial = np.flatnonzero(genes["mitochondrial"].to_numpy())
    n_nuclear = len(nuclear)
    lineage = cell_types["lineage"].to_numpy() - 1
    n_lineages = lineage.max() + 1

    log_expression = rng.normal(0.0, params.baseline_log_sd, n_nuclear) + rng.normal(
        0.0, params.cell_type_noise_log_sd, (n_types, n_nuclear)
    )
    # disjoint marker sets, lineages' first, then types'; all of them together fill at most half the genes
    cap = n_nuclear // (2 * (n_lineages + n_types))
    per_lineage = max(MIN_MARKERS_PER_GROUP, min(round(params.lineage_marker_fraction * n_nuclear), cap))
    per_type = max(MIN_MARKERS_PER_GROUP, min(round(params.type_marker_fraction * n_nuclear), cap))
    order = rng.permutation(n_nuclear)
    for group in range(n_lineages):
        markers = order[group * per_lineage : (group + 1) * per_lineage]
        fold = rng.normal(params.lineage_marker_log_fold, params.marker_log_fold_sd, per_lineage)
        log_expression[np.ix_(lineage == group, markers)] += fold
    for cell_type in range(n_types):
        start = n_lineages * per_lineage + cell_type * per_type
        markers = order[start : start + per_type]
        fold = rng.normal(params.type_marker_log_fold, params.marker_log_fold_sd, per_type)
        log_expression[cell_type, markers] += fold

    rna_content = params.mean_molecules_per_cell * lognormal_mean_one(rng, params.cell_type_rna_log_sd, n_types)
    mito_share = np.clip(params.mitochondrial_fraction * lognormal_mean_one(rng, 0.3, n_types), 0, 0.5)
    mito_pattern = np.exp(rng.normal(0.0, 0.5, len(mitochondrial)))

    profiles = np.empty((len(genes), n_types))
    nuclear_expression = np.exp(log_expression).T  # genes x types
    profiles[nuclear] = nuclear_expression / nuclear_expression.sum(axis=0) * (1 - mito_share) * rna_content
    profiles[mitochondrial] = (mito_pattern / mito_pattern.sum())[:, None] * mito_share * rna_content
    return pd.DataFrame(profiles, index=genes.index, columns=cell_types.index)
