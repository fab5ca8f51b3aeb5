"""The sites of the cell2location mapping model (spec §3), each written once: its shape, its prior and its prior mean.

:data:`SITES` is the one table of the model's latent variables. The Pyro model (:mod:`.model`), the fast objective's
constant priors and per-step priors (:mod:`.objective`), the prior means the guide starts from and the layout of the
flat parameter vector are all derived from it.

Shapes: S locations (spots of every sample fitted together, sorted so that each batch's spots are contiguous), G
genes, F cell types, E batches (slides), R location groups.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as nnf

from tissuemap.models.negative_binomial import NegativeBinomialPriors

# Pyro's AutoNormal default: every site starts as Normal(log prior mean, 0.1) in log space.
INIT_SCALE = 0.1


@dataclass(frozen=True)
class MappingPriors(NegativeBinomialPriors):
    """Fixed hyper-parameters of the cell2location model, with the package's defaults (spec §3); those of the
    additive background and the overdispersion are the ones the regression shares.

    The two a user sets per sample, cells per location N̂ and detection_alpha α_y, are data
    (:class:`MappingData`), since samples fitted together may differ in them.
    """

    n_groups: int = 50  # R, groups of co-located cell types (tissue zones)
    factors_per_location: float = 7.0  # Â, expected cell types per location
    groups_per_location: float = 7.0  # B̂, expected groups per location
    w_sf_var_ratio: float = 5.0  # v_w, shape/rate scaling of w_sf around Σ_r z_sr x_rf
    detection_mean_shape: float = 10.0  # y_e ~ Gamma(10, 10 / d̂)
    m_bar_shape: float = 1.0  # m̄ ~ Gamma(1, 1): mean platform effect
    m_bar_rate: float = 1.0
    u_m_rate: float = 3.0  # u_m ~ Exponential(3): a_m = 1 / u_m² controls m_g's spread


@dataclass(frozen=True)
class MappingData:
    """Everything the model conditions on, as tensors on one device and of one floating dtype.

    Attributes
    ----------
    counts
        ``(S, G)`` observed counts, dense; rows sorted by batch.
    batch_index
        ``(S,)`` batch (slide) of every location, non-decreasing: 0, 0, ..., 1, 1, ...
    signatures
        ``(F, G)`` reference expression signatures g_fg (fixed).
    n_cells_per_location
        ``(S, 1)`` N̂ of every location (its sample's value).
    detection_alpha
        ``(S, 1)`` α_y of every location.
    detection_mean
        d̂, prior mean of the per-batch detection y_e (0-d tensor).
    """

    counts: torch.Tensor
    batch_index: torch.Tensor
    signatures: torch.Tensor
    n_cells_per_location: torch.Tensor
    detection_alpha: torch.Tensor
    detection_mean: torch.Tensor

    @property
    def n_locations(self) -> int:
        return self.counts.shape[0]

    @property
    def n_genes(self) -> int:
        return self.counts.shape[1]

    @property
    def n_types(self) -> int:
        return self.signatures.shape[0]

    @property
    def n_batches(self) -> int:
        return int(self.batch_index[-1]) + 1

    def batch_bounds(self) -> list[tuple[int, int]]:
        """``(first row, end row)`` of every batch's block of locations."""
        sizes = torch.bincount(self.batch_index, minlength=self.n_batches).tolist()
        ends = [sum(sizes[: e + 1]) for e in range(len(sizes))]
        return [(end - size, end) for size, end in zip(sizes, ends)]


class Site(NamedTuple):
    """One latent variable of the model.

    ``prior(v, data, priors)`` gives the shape and rate of its Gamma prior (Exponential(λ) is Gamma(1, λ)) from the
    values ``v`` of the sites before it; ``mean(m, data, priors)`` its prior mean with those sites at their own prior
    means, in closed form (Pyro's ``init_to_mean``). Either may return Python numbers or tensors that broadcast to
    ``dims``.
    """

    name: str
    dims: tuple[str, str]  # sizes by letter: S, G, F, E, R or 1
    parents: tuple[str, ...]  # the sites its prior depends on
    prior: Callable
    mean: Callable


def gamma_around(shape, mean):
    """Shape and rate of the Gamma distribution of the given shape and mean."""
    return shape, shape / mean


# Every site of the model, in model order (each after the sites its prior depends on). Gamma(shape, rate).
SITES = (
    # gene-specific platform effect (single-cell reference -> Visium): m_g around m̄, spread 1 / sqrt(a_m)
    Site("m_bar", ("1", "1"), (),
         lambda v, d, p: (p.m_bar_shape, p.m_bar_rate), lambda m, d, p: p.m_bar_shape / p.m_bar_rate),
    Site("u_m", ("1", "1"), (), lambda v, d, p: (1.0, p.u_m_rate), lambda m, d, p: 1 / p.u_m_rate),
    Site("m_g", ("1", "G"), ("u_m", "m_bar"),  # Gamma(a_m, a_m / m̄), a_m = 1 / u_m²
         lambda v, d, p: gamma_around(v["u_m"].pow(-2), v["m_bar"]), lambda m, d, p: m["m_bar"]),
    # cells N̂ and groups B̂ expected at each location; z_sr: how much of group r location s holds
    Site("n_s", ("S", "1"), (), lambda v, d, p: (d.n_cells_per_location, 1.0), lambda m, d, p: d.n_cells_per_location),
    Site("b_s", ("S", "1"), (),
         lambda v, d, p: (p.groups_per_location, 1.0), lambda m, d, p: p.groups_per_location),
    Site("z_sr", ("S", "R"), ("b_s", "n_s"),
         lambda v, d, p: (v["b_s"] / p.n_groups, v["b_s"] / v["n_s"]), lambda m, d, p: m["n_s"] / p.n_groups),
    # groups of co-located cell types: x_rf, how much of type f group r holds
    Site("k_r", ("R", "1"), (),
         lambda v, d, p: (p.factors_per_location / p.groups_per_location, 1.0),
         lambda m, d, p: p.factors_per_location / p.groups_per_location),
    Site("x_rf", ("R", "F"), ("k_r",), lambda v, d, p: (v["k_r"] / d.n_types, v["k_r"]), lambda m, d, p: 1 / d.n_types),
    # w_sf: absolute number of cells of type f at s, the model's answer
    Site("w_sf", ("S", "F"), ("z_sr", "x_rf"),
         lambda v, d, p: (p.w_sf_var_ratio * (v["z_sr"] @ v["x_rf"]), p.w_sf_var_ratio),
         lambda m, d, p: m["z_sr"] @ m["x_rf"]),
    # detection: y_e per batch around d̂, y_s per location around its batch's y_e
    Site("y_e", ("E", "1"), (),
         lambda v, d, p: gamma_around(p.detection_mean_shape, d.detection_mean),
         lambda m, d, p: d.detection_mean),
    Site("y_s", ("S", "1"), ("y_e",),
         lambda v, d, p: gamma_around(d.detection_alpha, v["y_e"][d.batch_index]),
         lambda m, d, p: m["y_e"][d.batch_index]),
    # additive background s_eg per batch and gene: mean m_e, spread u_e
    Site("a", ("1", "1"), (),
         lambda v, d, p: (p.background_a_shape, p.background_a_rate),
         lambda m, d, p: p.background_a_shape / p.background_a_rate),
    Site("m_e", ("E", "1"), (),
         lambda v, d, p: (p.background_mean_shape, p.background_mean_rate),
         lambda m, d, p: p.background_mean_shape / p.background_mean_rate),
    Site("u_e", ("E", "1"), ("a",), lambda v, d, p: (1.0, v["a"]), lambda m, d, p: 1 / m["a"]),
    Site("s_eg", ("E", "G"), ("u_e", "m_e"),  # Gamma(1 / u_e², 1 / (u_e² m_e))
         lambda v, d, p: gamma_around(v["u_e"].pow(-2), v["m_e"]), lambda m, d, p: m["m_e"]),
    # overdispersion α_eg = 1 / v_eg² per batch and gene
    Site("phi", ("1", "1"), (), lambda v, d, p: (p.phi_shape, p.phi_rate), lambda m, d, p: p.phi_shape / p.phi_rate),
    Site("v_eg", ("E", "G"), ("phi",), lambda v, d, p: (1.0, v["phi"]), lambda m, d, p: 1 / m["phi"]),
)
SITE_NAMES = tuple(site.name for site in SITES)
# sites with one value per location or per batch (a sample's export takes its rows of these)
LOCATION_SITES = tuple(site.name for site in SITES if site.dims[0] == "S")
BATCH_SITES = tuple(site.name for site in SITES if site.dims[0] == "E")


class SiteLayout:
    """Where each site's values sit in one flat vector of all P latent scalars (model order, row-major)."""

    def __init__(self, n_locations: int, n_genes: int, n_types: int, n_batches: int, n_groups: int):
        sizes = {"1": 1, "S": n_locations, "G": n_genes, "F": n_types, "E": n_batches, "R": n_groups}
        self.shapes = {site.name: tuple(sizes[dim] for dim in site.dims) for site in SITES}
        self.offsets = {}
        offset = 0
        for name in SITE_NAMES:
            self.offsets[name] = offset
            offset += math.prod(self.shapes[name])
        self.size = offset

    @classmethod
    def for_data(cls, data: MappingData, priors: MappingPriors) -> SiteLayout:
        return cls(data.n_locations, data.n_genes, data.n_types, data.n_batches, priors.n_groups)

    def split(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Views of ``flat`` (last axis P) as every site's ``shape``."""
        lead = flat.shape[:-1]
        return {
            name: flat[..., self.offsets[name]: self.offsets[name] + math.prod(shape)].reshape(*lead, *shape)
            for name, shape in self.shapes.items()
        }

    def join(self, values: dict[str, torch.Tensor]) -> torch.Tensor:
        """Inverse of :meth:`split`: one flat vector from per-site tensors."""
        return torch.cat([values[name].reshape(-1) for name in SITE_NAMES])


def prior_means(data: MappingData, priors: MappingPriors = MappingPriors()) -> dict[str, torch.Tensor]:
    """Every site's prior mean with its parents at their own prior means, in model order (Pyro's ``init_to_mean``)."""
    shapes = SiteLayout.for_data(data, priors).shapes
    like = data.counts
    means = {}
    for site in SITES:
        mean = torch.as_tensor(site.mean(means, data, priors), dtype=like.dtype, device=like.device)
        means[site.name] = mean.expand(shapes[site.name])
    return means


def initial_guide_parameters(data: MappingData, priors: MappingPriors = MappingPriors()) -> torch.Tensor:
    """The guide's starting point as one ``(2, P)`` tensor: row 0 the locations (log prior means), row 1 the scales
    in the softplus-unconstrained space the optimiser works in (Pyro's ``AutoNormal`` parameterisation)."""
    layout = SiteLayout.for_data(data, priors)
    loc = torch.log(layout.join(prior_means(data, priors)))
    raw_scale = torch.full_like(loc, math.log(math.expm1(INIT_SCALE)))  # softplus(raw) = 0.1
    return torch.stack([loc, raw_scale])


def guide_scale(raw_scale: torch.Tensor) -> torch.Tensor:
    """The guide's standard deviations from their unconstrained values (Pyro's ``softplus_positive``)."""
    return nnf.softplus(raw_scale)
