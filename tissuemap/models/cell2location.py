"""The cell2location spatial mapping model (spec §3): the Pyro model, its mean-field guide, and a fast objective.

Three pieces, tensors in and tensors out (no AnnData here):

- :func:`model` is the generative process written in Pyro, site by site as in the spec. It is the specification:
  the tests check that the fast objective below equals Pyro's ``Trace_ELBO`` on it.
- :class:`SiteLayout` and :func:`initial_guide_parameters` describe the guide: Pyro's ``AutoNormal`` (a normal
  distribution per scalar in the log space of every site, ``init_to_mean``, initial scale 0.1), with all locations
  and all scales held in one ``(2, P)`` tensor so that the optimiser updates a single tensor.
- :class:`MappingObjective` computes the negative ELBO of one guide sample directly in torch: reparameterised
  log-normal draws, closed-form log-densities, and a negative-binomial likelihood that does no redundant work (the
  constant ``log Γ(x+1)`` left out, ``Σ log Γ(x+α)`` from each gene's count histogram, the terms of every
  location × gene entry and their gradient computed together, block by block, zero counts never read).

Shapes: S locations (spots of every sample fitted together, sorted so that each batch's spots are contiguous), G
genes, F cell types, E batches (slides), R location groups.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as nnf

# Pyro's AutoNormal default: every site starts as Normal(log prior mean, 0.1) in log space.
INIT_SCALE = 0.1
HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
# Count values whose Σ log Γ(x+α) term comes from the per-gene histogram; larger counts are handled one by one.
MAX_HISTOGRAM_COUNT = 64
# Entries (locations x genes) of the likelihood computed at once. On CPU ~0.5M keeps every temporary in cache-sized,
# reusable heap blocks (measured fastest on a 2-core EPYC; whole-matrix temporaries are slower per entry). On a GPU
# whole batches, up to 2^28 entries (1 GiB per float32 temporary).
CPU_BLOCK_ENTRIES = 1 << 19
GPU_BLOCK_ENTRIES = 1 << 28


@dataclass(frozen=True)
class MappingPriors:
    """Fixed hyper-parameters of the cell2location model, with the package's defaults (spec §3).

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
    background_a_shape: float = 9.0  # a ~ Gamma(9, 3)
    background_a_rate: float = 3.0
    background_mean_shape: float = 1.0  # m_e ~ Gamma(1, 100): mean additive background
    background_mean_rate: float = 100.0
    phi_shape: float = 9.0  # φ ~ Gamma(9, 3): overdispersion hyper-prior
    phi_rate: float = 3.0


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


def model(data: MappingData, priors: MappingPriors = MappingPriors()) -> None:
    """The cell2location generative process (spec §3), one Pyro sample site per model variable.

    Gamma(a, b) has shape a and rate b. Observed counts are the site ``counts``.
    """
    S, G, F, E, R = data.n_locations, data.n_genes, data.n_types, data.n_batches, priors.n_groups

    def const(value: float) -> torch.Tensor:
        return data.counts.new_tensor(value)

    def global_site(name: str, distribution, shape: tuple[int, int]) -> torch.Tensor:
        return pyro.sample(name, distribution.expand(shape).to_event(2))

    # gene-specific platform effect (single-cell reference -> Visium): m_g around m̄, spread 1 / sqrt(a_m)
    m_bar = global_site("m_bar", dist.Gamma(const(priors.m_bar_shape), const(priors.m_bar_rate)), (1, 1))
    u_m = global_site("u_m", dist.Exponential(const(priors.u_m_rate)), (1, 1))
    a_m = u_m.pow(-2)
    m_g = global_site("m_g", dist.Gamma(a_m, a_m / m_bar), (1, G))

    # groups of co-located cell types: x_rf, how much of type f group r holds
    factors_per_group = const(priors.factors_per_location / priors.groups_per_location)
    k_r = global_site("k_r", dist.Gamma(factors_per_group, const(1.0)), (R, 1))
    x_rf = global_site("x_rf", dist.Gamma(k_r / F, k_r), (R, F))

    # per-batch detection y_e, additive background s_eg and overdispersion alpha_eg = 1 / v_eg²
    y_e_shape = const(priors.detection_mean_shape)
    y_e = global_site("y_e", dist.Gamma(y_e_shape, y_e_shape / data.detection_mean), (E, 1))
    a = global_site("a", dist.Gamma(const(priors.background_a_shape), const(priors.background_a_rate)), (1, 1))
    m_e = global_site("m_e", dist.Gamma(const(priors.background_mean_shape), const(priors.background_mean_rate)),
                      (E, 1))
    u_e = global_site("u_e", dist.Exponential(a), (E, 1))
    s_eg = global_site("s_eg", dist.Gamma(u_e.pow(-2), u_e.pow(-2) / m_e), (E, G))
    phi = global_site("phi", dist.Gamma(const(priors.phi_shape), const(priors.phi_rate)), (1, 1))
    v_eg = global_site("v_eg", dist.Exponential(phi), (E, G))
    alpha_eg = v_eg.pow(-2)

    batch = data.batch_index
    with pyro.plate("locations", S, dim=-2):
        n_s = pyro.sample("n_s", dist.Gamma(data.n_cells_per_location, const(1.0)))  # (S, 1) cells at s
        b_s = pyro.sample("b_s", dist.Gamma(const(priors.groups_per_location), const(1.0)))  # (S, 1) groups at s
        with pyro.plate("groups", R, dim=-1):
            z_sr = pyro.sample("z_sr", dist.Gamma(b_s / R, b_s / n_s))  # (S, R)
        with pyro.plate("cell_types", F, dim=-1):
            # w_sf: absolute number of cells of type f at s, the model's answer
            w_sf = pyro.sample("w_sf", dist.Gamma(priors.w_sf_var_ratio * (z_sr @ x_rf), const(priors.w_sf_var_ratio)))
        y_s = pyro.sample("y_s", dist.Gamma(data.detection_alpha, data.detection_alpha / y_e[batch]))  # (S, 1)
        mu = (m_g * (w_sf @ data.signatures) + s_eg[batch]) * y_s  # (S, G)
        with pyro.plate("genes", G, dim=-1):
            alpha = alpha_eg[batch]
            pyro.sample("counts", dist.GammaPoisson(alpha, alpha / mu), obs=data.counts)


# Every site of the model, in model order.
SITE_NAMES = ("m_bar", "u_m", "m_g", "n_s", "b_s", "z_sr", "k_r", "x_rf", "w_sf",
              "y_e", "y_s", "a", "m_e", "u_e", "s_eg", "phi", "v_eg")


class SiteLayout:
    """Where each site's values sit in one flat vector of all P latent scalars (model order, row-major)."""

    def __init__(self, n_locations: int, n_genes: int, n_types: int, n_batches: int, n_groups: int):
        S, G, F, E, R = n_locations, n_genes, n_types, n_batches, n_groups
        self.shapes = {
            "m_bar": (1, 1), "u_m": (1, 1), "m_g": (1, G),
            "n_s": (S, 1), "b_s": (S, 1), "z_sr": (S, R),
            "k_r": (R, 1), "x_rf": (R, F), "w_sf": (S, F),
            "y_e": (E, 1), "y_s": (S, 1),
            "a": (1, 1), "m_e": (E, 1), "u_e": (E, 1), "s_eg": (E, G),
            "phi": (1, 1), "v_eg": (E, G),
        }
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
    S, G, F, E, R = data.n_locations, data.n_genes, data.n_types, data.n_batches, priors.n_groups
    ones = data.counts.new_ones
    means = {"m_bar": ones(1, 1) * priors.m_bar_shape / priors.m_bar_rate, "u_m": ones(1, 1) / priors.u_m_rate}
    means["m_g"] = means["m_bar"].expand(1, G)  # Gamma(a_m, a_m / m̄) has mean m̄
    means["n_s"] = data.n_cells_per_location.clone()
    means["b_s"] = ones(S, 1) * priors.groups_per_location
    means["z_sr"] = (means["n_s"] / R).expand(S, R)  # shape b/R over rate b/n: n/R
    means["k_r"] = ones(R, 1) * priors.factors_per_location / priors.groups_per_location
    means["x_rf"] = ones(R, F) / F  # shape k/F over rate k
    means["w_sf"] = means["z_sr"] @ means["x_rf"]
    means["y_e"] = ones(E, 1) * data.detection_mean
    means["y_s"] = means["y_e"][data.batch_index]
    means["a"] = ones(1, 1) * priors.background_a_shape / priors.background_a_rate
    means["m_e"] = ones(E, 1) * priors.background_mean_shape / priors.background_mean_rate
    means["u_e"] = (1 / means["a"]).expand(E, 1)
    means["s_eg"] = means["m_e"].expand(E, G)
    means["phi"] = ones(1, 1) * priors.phi_shape / priors.phi_rate
    means["v_eg"] = (1 / means["phi"]).expand(E, G)
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


@dataclass(frozen=True)
class CountBlock:
    """The observed counts of a block of consecutive locations of one batch, as their non-zero entries."""

    start: int
    end: int
    batch: int
    values: torch.Tensor  # (nnz,) counts x > 0
    flat_index: torch.Tensor  # (nnz,) row * G + gene, rows counted from ``start``


def block_terms(w, signatures, platform, background, overdispersion, detection, values, flat_index):
    """The μ-dependent part of the NB log-likelihood of one block of locations of one batch, and its gradients.

    With μ = (m_g Σ_f w_sf g_fg + s_g) y_s and α = α_g, the part is ``Σ x log μ − (x+α) log(α+μ)``, written
    ``−Σ_g α_g Σ_s log(α+μ)`` over every entry plus ``Σ x log(μ / (α+μ))`` over the non-zero counts only.
    (The rest, ``Σ α log α + log Γ(x+α) − log Γ(α)``, does not involve μ and is computed per batch elsewhere.)

    Parameters
    ----------
    w
        ``(n, F)`` cell abundance w_sf of the block's locations.
    signatures
        ``(F, G)`` g_fg.
    platform, background, overdispersion
        ``(1, G)`` m_g, and s_eg and α_eg of the block's batch.
    detection
        ``(n, 1)`` y_s.
    values, flat_index
        The block's non-zero counts (see :class:`CountBlock`).

    Returns
    -------
    The log-likelihood part (0-d) and its gradients with respect to ``w``, ``platform``, ``background``,
    ``detection`` and ``overdispersion`` (those of ``(1, G)`` tensors as ``(G,)``).
    """
    cell_part = w @ signatures  # Σ_f w_sf g_fg
    mu = torch.addcmul(background, cell_part, platform).mul_(detection)
    total = mu + overdispersion
    log_total = torch.log(total)
    inverse_total = total.reciprocal_()
    mu_observed = mu.view(-1).index_select(0, flat_index)
    inverse_observed = inverse_total.view(-1).index_select(0, flat_index)
    fraction_observed = mu_observed * inverse_observed  # μ / (α+μ) where x > 0
    log_lik = torch.dot(values, torch.log(fraction_observed)) - torch.dot(overdispersion.view(-1), log_total.sum(0))
    # ∂/∂μ is −α/(α+μ) everywhere, plus x/μ − x/(α+μ) where x > 0
    grad_mu = inverse_total.mul_(-overdispersion)
    # ∂/∂α = −log(α+μ) − α/(α+μ) everywhere, − x/(α+μ) where x > 0: summed over locations through a
    # location × gene scratch (a scatter-add onto repeated gene indices would be non-deterministic on a GPU)
    alpha_terms = grad_mu.clone()
    alpha_terms.view(-1).scatter_add_(0, flat_index, -values * inverse_observed)
    grad_alpha = alpha_terms.sum(0) - log_total.sum(0)
    grad_mu.view(-1).scatter_add_(0, flat_index, values * (1 - fraction_observed) / mu_observed)
    grad_detection = (grad_mu * mu).sum(1, keepdim=True) / detection  # ∂μ/∂y_s = μ / y_s
    grad_linear = grad_mu.mul_(detection)  # ∂/∂(m_g Σ_f w g + s)
    # m_g's gradient from the kept Σ_f w g: an element-wise product instead of a third matrix product
    grad_platform = (grad_linear * cell_part).sum(0)
    grad_w = grad_linear @ (signatures * platform).T
    return log_lik, grad_w, grad_platform, grad_linear.sum(0), grad_detection, grad_alpha


class _NegativeBinomialMeanTerms(torch.autograd.Function):
    """Σ over locations and genes of the μ-dependent NB terms (see :func:`block_terms`). Gradients are computed in
    the forward pass, block by block, so that no location × gene temporary outlives its block."""

    @staticmethod
    def forward(ctx, w, platform, background, detection, overdispersion, objective):
        grad_w = torch.empty_like(w)
        grad_platform = torch.zeros_like(platform)
        grad_background = torch.zeros_like(background)
        grad_detection = torch.empty_like(detection)
        grad_alpha = torch.zeros_like(overdispersion)
        log_lik = w.new_zeros(())
        for block in objective.blocks:
            rows, batch = slice(block.start, block.end), slice(block.batch, block.batch + 1)
            terms = block_terms(
                w[rows], objective.signatures, platform, background[batch], overdispersion[batch], detection[rows],
                block.values, block.flat_index,
            )
            log_lik += terms[0]
            grad_w[rows] = terms[1]
            grad_platform += terms[2]
            grad_background[batch] += terms[3]
            grad_detection[rows] = terms[4]
            grad_alpha[batch] += terms[5]
        ctx.save_for_backward(grad_w, grad_platform, grad_background, grad_detection, grad_alpha)
        return log_lik

    @staticmethod
    def backward(ctx, grad_output):
        return (*(grad * grad_output for grad in ctx.saved_tensors), None)


class MappingObjective:
    """The negative ELBO of the cell2location model under its mean-field guide, for one guide sample.

    Equal to Pyro's ``Trace_ELBO`` loss on :func:`model` with ``AutoNormal`` minus the constant
    ``Σ log Γ(x+1)`` (:attr:`log_factorial_total`), and much cheaper: it precomputes per batch and gene the
    histogram of counts, touches the observed counts only where they are not zero, and gets the gradient of the
    location × gene terms analytically, in the same pass as their value.

    Parameters
    ----------
    data
        The model's data; its device and dtype are used throughout.
    priors
        Fixed hyper-parameters.
    block_rows
        Locations per block of the likelihood. ``None``: :data:`CPU_BLOCK_ENTRIES` or :data:`GPU_BLOCK_ENTRIES`
        entries.
    """

    def __init__(self, data: MappingData, priors: MappingPriors = MappingPriors(), block_rows: int | None = None):
        self.data = data
        self.priors = priors
        self.layout = SiteLayout.for_data(data, priors)
        self.signatures = data.signatures
        self.batch_index = data.batch_index
        bounds = data.batch_bounds()
        self.locations_per_batch = data.counts.new_tensor([[end - start] for start, end in bounds])
        if block_rows is None:
            entries = GPU_BLOCK_ENTRIES if data.counts.device.type == "cuda" else CPU_BLOCK_ENTRIES
            block_rows = max(1, entries // data.n_genes)
        starts = [first for start, end in bounds for first in range(start, end, block_rows)]
        ends = [min(first + block_rows, end) for start, end in bounds for first in range(start, end, block_rows)]
        batches = [batch for batch, (start, end) in enumerate(bounds) for _ in range(start, end, block_rows)]
        self.cutoff = self._histogram_cutoff(zip(starts, ends))
        self._setup_blocks(starts, ends, batches)
        self._setup_constant_priors()

    def _histogram_cutoff(self, row_ranges) -> int:
        """K of :meth:`_setup_blocks`: the smallest count value (1 to :data:`MAX_HISTOGRAM_COUNT`) exceeded by at
        most E·G entries."""
        counts = self.data.counts
        top = MAX_HISTOGRAM_COUNT + 1
        frequency = torch.zeros(top + 1, dtype=torch.long, device=counts.device)
        for start, end in row_ranges:
            frequency += torch.bincount(counts[start:end].clamp(max=top).long().view(-1), minlength=top + 1)
        exceeding = frequency.flip(0).cumsum(0).flip(0)[1:].tolist()  # exceeding[k]: entries with x > k
        allowed = self.data.n_batches * self.data.n_genes
        return next((k for k in range(1, MAX_HISTOGRAM_COUNT) if exceeding[k] <= allowed), MAX_HISTOGRAM_COUNT)

    def _setup_blocks(self, starts: list[int], ends: list[int], batches: list[int]) -> None:
        """The non-zero counts of every block (:class:`CountBlock`), and the tables for Σ_s log Γ(x+α) − log Γ(α) =
        Σ_j #(x > j) log(α + j) per batch and gene, one block at a time (no whole-data temporary).

        ``exceedance[e, j, g]`` counts batch e's locations with x_sg > j, for j below the cutoff K
        (:meth:`_histogram_cutoff`); the rare larger counts get log Γ(x+α) − log Γ(K+α) each.
        """
        counts, E, G, K = self.data.counts, self.data.n_batches, self.data.n_genes, self.cutoff
        histogram = torch.zeros(E * K * G, dtype=torch.long, device=counts.device)
        large_values, large_batch, large_gene = [], [], []
        self.blocks, self.log_factorial_total = [], 0.0
        for start, end, batch in zip(starts, ends, batches):
            block = counts[start:end].reshape(-1)
            flat_index = torch.nonzero(block).squeeze(1)  # row-major: row * G + gene, rows counted from start
            values = block[flat_index]
            self.blocks.append(CountBlock(start, end, batch, values, flat_index))
            genes = flat_index % G
            # histogram[e, v - 1, g]: entries of batch e and gene g with min(x, K) == v
            histogram += torch.bincount((batch * K + values.clamp(max=K).long() - 1) * G + genes, minlength=E * K * G)
            large = values > K
            large_values.append(values[large])
            large_gene.append(genes[large])
            large_batch.append(torch.full_like(large_gene[-1], batch))
            self.log_factorial_total += float(torch.lgamma(values.double() + 1).sum())
        self.exceedance = histogram.reshape(E, K, G).flip(1).cumsum(1).flip(1).to(counts.dtype)
        self.count_steps = torch.arange(K, dtype=counts.dtype, device=counts.device).reshape(1, K, 1)
        self.large_values, self.large_batch, self.large_gene = (
            torch.cat(parts) for parts in (large_values, large_batch, large_gene)
        )

    def _setup_constant_priors(self) -> None:
        """Shape and rate of the sites whose priors do not depend on other sites, at their sites' shapes, once."""
        p, data, like = self.priors, self.data, self.data.counts
        constant = {
            "m_bar": (p.m_bar_shape, p.m_bar_rate),
            "u_m": (1.0, p.u_m_rate),
            "n_s": (data.n_cells_per_location, 1.0),
            "b_s": (p.groups_per_location, 1.0),
            "k_r": (p.factors_per_location / p.groups_per_location, 1.0),
            "y_e": (p.detection_mean_shape, p.detection_mean_shape / data.detection_mean),
            "a": (p.background_a_shape, p.background_a_rate),
            "m_e": (p.background_mean_shape, p.background_mean_rate),
            "phi": (p.phi_shape, p.phi_rate),
        }
        self.constant_priors = {
            name: tuple(torch.as_tensor(value, dtype=like.dtype, device=like.device) for value in parameters)
            for name, parameters in constant.items()
        }

    def prior_parameters(self, v: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Gamma shape and rate of every site's prior given the other sites' values (Exponential(λ) = Gamma(1, λ))."""
        p, data = self.priors, self.data
        F, R = data.n_types, p.n_groups
        a_m = v["u_m"].pow(-2)
        inverse_u_e_sq = v["u_e"].pow(-2)
        one = v["a"].new_ones(())
        return {
            **self.constant_priors,
            "m_g": (a_m, a_m / v["m_bar"]),
            "z_sr": (v["b_s"] / R, v["b_s"] / v["n_s"]),
            "x_rf": (v["k_r"] / F, v["k_r"]),
            "w_sf": (p.w_sf_var_ratio * (v["z_sr"] @ v["x_rf"]), p.w_sf_var_ratio * one),
            "y_s": (data.detection_alpha, data.detection_alpha / v["y_e"][self.batch_index]),
            "u_e": (one, v["a"]),
            "s_eg": (inverse_u_e_sq, inverse_u_e_sq / v["m_e"]),
            "v_eg": (one, v["phi"]),
        }

    def log_prior(self, z: torch.Tensor, theta: torch.Tensor, v: dict[str, torch.Tensor]) -> torch.Tensor:
        """Σ over all sites of log Gamma(θ; shape, rate), using log θ = z (all sites flattened together)."""
        parameters = self.prior_parameters(v)
        shapes = self.layout.shapes
        shape = torch.cat([parameters[name][0].expand(shapes[name]).reshape(-1) for name in SITE_NAMES])
        rate = torch.cat([parameters[name][1].expand(shapes[name]).reshape(-1) for name in SITE_NAMES])
        return (shape * torch.log(rate) + (shape - 1) * z - rate * theta - torch.lgamma(shape)).sum()

    def log_likelihood(self, v: dict[str, torch.Tensor]) -> torch.Tensor:
        """log p(counts | sites) without the constant −Σ log Γ(x+1)."""
        alpha = v["v_eg"].pow(-2)  # (E, G)
        mean_terms = _NegativeBinomialMeanTerms.apply(v["w_sf"], v["m_g"], v["s_eg"], v["y_s"], alpha, self)
        alpha_log_alpha = (self.locations_per_batch * alpha * torch.log(alpha)).sum()
        # Σ_s log Γ(x+α) − log Γ(α): histogram part, then the counts above the cutoff one by one
        histogram = (self.exceedance * torch.log(alpha.unsqueeze(1) + self.count_steps)).sum()
        large_alpha = alpha[self.large_batch, self.large_gene]
        large = (torch.lgamma(self.large_values + large_alpha) - torch.lgamma(self.cutoff + large_alpha)).sum()
        return mean_terms + alpha_log_alpha + histogram + large

    def negative_elbo(self, guide_parameters: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """−ELBO (without Σ log Γ(x+1)) for the guide sample ``θ = exp(loc + scale·eps)``.

        Parameters
        ----------
        guide_parameters
            ``(2, P)``: locations and unconstrained scales (see :func:`initial_guide_parameters`).
        eps
            ``(P,)`` standard normal noise.
        """
        loc, scale = guide_parameters[0], guide_scale(guide_parameters[1])
        z = loc + scale * eps
        theta = torch.exp(z)
        values = self.layout.split(theta)
        # −log q(θ): the normal density of z, and the Jacobian of θ = exp(z)
        neg_log_guide = (0.5 * eps.square() + torch.log(scale) + z).sum() + HALF_LOG_2PI * eps.numel()
        return -(self.log_prior(z, theta, values) + self.log_likelihood(values) + neg_log_guide)
