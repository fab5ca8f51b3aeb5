"""What each spot holds and what Visium reads from it: true cells per type per spot, then UMI counts.

Zones have a composition (shares of the non-rare types: their zone-specific types and the ubiquitous ones) and a
cell density. A spot's expected number of cells of type f is

    lambda_sf = N * density_s * share_sf * eps_sf,     eps_sf ~ Gamma(5, 5)

where N is ``n_cells_per_location``, density_s and share_sf blend the zones by the spot's membership and vary
smoothly within the tissue; the true cells are w_sf ~ Poisson(lambda_sf). Each rare type sits in a few random spots,
1 + Poisson(1) cells in each. Counts follow the cell2location model exactly:

    D_sg ~ NB((m_g sum_f w_sf mu_fg + s_g) y_s, alpha_g),   y_s ~ Gamma(detection_alpha, detection_alpha / y_e)

with m_g the platform effect, s_g the sample's ambient RNA (a fraction of its average spot) and y_e ~ Gamma(10, 10 /
``visium_detection_mean``) the sample's detection.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from tissuemap.simulation.layout import TissueSection
from tissuemap.simulation.parameters import SimulationParameters
from tissuemap.simulation.profiles import RARE, UBIQUITOUS, ZONE, zone_names
from tissuemap.simulation.sampling import lognormal_mean_one, negative_binomial_csr, overdispersion, smooth_field


@dataclass
class TissueZones:
    """Shared by all samples (they are sections of one tissue): ``composition`` zones x types (rows sum to 1 over
    non-rare types) and ``density`` per zone (relative cell density, mean 1)."""

    composition: pd.DataFrame
    density: pd.Series


@dataclass
class SpotCounts:
    """One sample's Visium reads: ``counts`` spots x genes (int32 CSR), per-spot ``detection`` y_s, and the
    sample-level ``detection_mean`` y_e and ``ambient_fraction``."""

    counts: sp.csr_matrix
    detection: np.ndarray
    detection_mean: float
    ambient_fraction: float


def tissue_zones(cell_types: pd.DataFrame, params: SimulationParameters, rng: np.random.Generator) -> TissueZones:
    """Zone compositions: ``zone_specific_share`` of a zone's cells from its own types (Gamma(2) weights), the rest
    from the ubiquitous types (weights shared by zones, jittered per zone); all to ubiquitous types where a zone
    has no type of its own."""
    names = zone_names(params.n_zones)
    role = cell_types["spatial_role"].to_numpy()
    ubiquitous_weights = rng.gamma(2.0, 1.0, (role == UBIQUITOUS).sum())
    composition = np.zeros((params.n_zones, len(cell_types)))
    for z, zone in enumerate(names):
        own = np.flatnonzero((role == ZONE) & (cell_types["home_zone"].to_numpy() == zone))
        ubiquitous = ubiquitous_weights * lognormal_mean_one(rng, 0.3, len(ubiquitous_weights))
        own_weights = rng.gamma(2.0, 1.0, len(own))
        own_share = params.zone_specific_share if len(own) else 0.0
        composition[z, role == UBIQUITOUS] = (1 - own_share) * ubiquitous / ubiquitous.sum()
        composition[z, own] = own_share * own_weights / max(own_weights.sum(), 1e-12)
    density = lognormal_mean_one(rng, params.zone_density_log_sd, params.n_zones)
    return TissueZones(
        composition=pd.DataFrame(composition, index=pd.Index(names, name="zone"), columns=cell_types.index),
        density=pd.Series(density / density.mean(), index=pd.Index(names, name="zone"), name="cell_density"),
    )


def cell_abundance(section: TissueSection, zones: TissueZones, cell_types: pd.DataFrame, params: SimulationParameters,
                   rng: np.random.Generator) -> np.ndarray:
    """True number of cells of each type in each spot (spots x types, int), mean total near ``n_cells_per_location``."""
    coords = section.spots[["x_um", "y_um"]].to_numpy()
    tissue_scale = np.ptp(coords, axis=0).mean() / 4
    role = cell_types["spatial_role"].to_numpy()

    density = section.membership @ zones.density.to_numpy()
    density *= np.exp(params.density_field_log_sd * smooth_field(rng, coords, tissue_scale)[:, 0])
    share = section.membership @ zones.composition.to_numpy()
    share[:, role == UBIQUITOUS] *= np.exp(
        params.ubiquitous_field_log_sd * smooth_field(rng, coords, tissue_scale, n_fields=(role == UBIQUITOUS).sum())
    )
    share /= share.sum(axis=1, keepdims=True)
    noise = rng.gamma(params.composition_noise_shape, 1 / params.composition_noise_shape, share.shape)
    expected = params.n_cells_per_location * (density / density.mean())[:, None] * share * noise
    abundance = rng.poisson(expected)

    n_rare_spots = max(3, round(params.rare_spot_fraction * len(coords)))
    for rare_type in np.flatnonzero(role == RARE):
        spots = rng.choice(len(coords), n_rare_spots, replace=False)
        abundance[spots, rare_type] = 1 + rng.poisson(1.0, n_rare_spots)
    return abundance


def platform_effect(n_genes: int, params: SimulationParameters, rng: np.random.Generator) -> np.ndarray:
    """Per-gene Visium / single-cell sensitivity ratio m_g (log-normal, mean 1), shared by all samples."""
    return lognormal_mean_one(rng, params.platform_effect_log_sd, n_genes)


def spot_counts(abundance: np.ndarray, profiles: pd.DataFrame, platform: np.ndarray, params: SimulationParameters,
                rng: np.random.Generator) -> SpotCounts:
    """UMI counts of one sample from its true cell abundance (see the module docstring for the model)."""
    molecules_per_cell = profiles.to_numpy().T * platform  # types x genes, in Visium's units
    ambient_fraction = rng.uniform(params.spatial_ambient_fraction_min, params.spatial_ambient_fraction_max)
    ambient = ambient_fraction * (abundance.mean(axis=0) @ molecules_per_cell)
    shape = params.visium_detection_sample_shape
    detection_mean = rng.gamma(shape, params.visium_detection_mean / shape)
    detection = rng.gamma(params.detection_alpha, detection_mean / params.detection_alpha, len(abundance))
    alpha = overdispersion(rng, params.overdispersion_rate, len(platform))

    def mean_of_rows(rows: slice) -> np.ndarray:
        return (abundance[rows] @ molecules_per_cell + ambient) * detection[rows, None]

    counts = negative_binomial_csr(rng, mean_of_rows, len(abundance), alpha, np.int32)
    return SpotCounts(counts=counts, detection=detection, detection_mean=float(detection_mean),
                      ambient_fraction=float(ambient_fraction))
