"""The reference regression of cell2location as a Pyro module (spec §2): tensors in, tensors out.

Counts of cell c and gene g are negative binomial around

    mean_cg = (mu_fg[f(c)] + s_eg[e(c)]) * y_e[e(c)] * T_cg,        T_cg = sum over covariates k of t_lg[level_k(c)]

with per-type signatures ``mu_fg``, per-batch detection ``y_e``, per-batch additive background (ambient RNA)
``s_eg`` (hyper-priors ``a``, ``m_e``, ``u_e``), per-covariate-level gene effects ``t_lg`` and per-gene
overdispersion ``v_g`` (alpha_g = 1/v_g², hyper-prior ``phi``). Every variable is global: there are no per-cell
latent variables, so minibatches of cells give an unbiased estimate of the whole reference's likelihood.

Cells of one *group* (same type, batch and covariate levels) share their mean, so the mean and its logarithms are
computed per group (a few hundred rows) rather than per cell (thousands). What is left per count, log Γ(x + α), is
summed from a per-gene histogram of the minibatch's counts (:mod:`tissuemap.models.negative_binomial`), the rare
counts above :data:`HISTOGRAM_MAX_COUNT` one by one.

Reading AnnData, training and export live in :mod:`tissuemap.signatures`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import ClassVar, NamedTuple

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.distributions.torch_distribution import TorchDistribution
from pyro.infer.autoguide import AutoNormal
from pyro.infer.autoguide.initialization import init_to_value

from tissuemap.models.negative_binomial import (
    HISTOGRAM_MAX_COUNT,
    NegativeBinomialPriors,
    count_steps,
    exceedance_table,
    histogram_log_gamma_terms,
    large_count_log_gamma_terms,
)
from tissuemap.models.posterior import lognormal_summaries

# Added to each type's average count to initialise mu_fg away from zero (a type may not express a gene at all).
SIGNATURE_INIT_OFFSET = 1e-4
# Standard deviation of every site's guide in log space at the start (AutoNormal's init_scale).
GUIDE_INIT_SCALE = 0.1


@dataclass(frozen=True)
class RegressionPriors(NegativeBinomialPriors):
    """Hyper-parameters of the regression: the cell2location package's defaults. Gamma(shape, rate) throughout.
    The background s_eg (ambient RNA here) and overdispersion v_g hyper-priors are the shared ones."""

    signature_shape: float = 1.0  # mu_fg ~ Gamma(1, 1)
    signature_rate: float = 1.0
    detection_shape: float = 1.0  # y_e ~ Gamma(1, 1)
    detection_rate: float = 1.0
    technical_shape: float = 200.0  # t_lg ~ Gamma(200, 200 / 1): tightly around 1
    technical_mean: float = 1.0


class CellCountTerms(NamedTuple):
    """What the likelihood needs of each cell's counts besides the counts themselves: data only, computed once for
    the whole reference (:func:`cell_count_terms`), one row per cell."""

    log_factorial: torch.Tensor  # cells: Σ_g log Γ(x_cg + 1)
    large_genes: torch.Tensor  # cells × width (long): the genes with x_cg > HISTOGRAM_MAX_COUNT, padded with gene 0
    large_values: torch.Tensor  # cells × width: their counts, padded with HISTOGRAM_MAX_COUNT (which adds nothing)

    def rows(self, cell_ids) -> CellCountTerms:
        """The terms of the cells ``cell_ids``."""
        return CellCountTerms(*(terms[cell_ids] for terms in self))


def cell_count_terms(counts, device=None, dtype=torch.float32) -> CellCountTerms:
    """:class:`CellCountTerms` of every cell of ``counts`` (a SciPy CSR matrix of integer counts without repeated
    entries), built on the host without densifying."""
    from scipy.special import gammaln

    n_cells = counts.shape[0]
    row_of_entry = np.repeat(np.arange(n_cells), np.diff(counts.indptr))
    log_factorial = np.bincount(row_of_entry, weights=gammaln(counts.data + 1.0), minlength=n_cells)
    large = counts.data > HISTOGRAM_MAX_COUNT
    large_rows = row_of_entry[large]
    per_cell = np.bincount(large_rows, minlength=n_cells)
    width = max(int(per_cell.max(initial=0)), 1)
    slots = np.arange(len(large_rows)) - np.repeat(np.cumsum(per_cell) - per_cell, per_cell)
    genes = np.zeros((n_cells, width), dtype=np.int64)
    values = np.full((n_cells, width), HISTOGRAM_MAX_COUNT, dtype=np.float64)
    genes[large_rows, slots] = counts.indices[large]
    values[large_rows, slots] = counts.data[large]
    return CellCountTerms(
        torch.as_tensor(log_factorial, dtype=dtype, device=device),
        torch.as_tensor(genes, device=device),
        torch.as_tensor(values, dtype=dtype, device=device),
    )


class GroupedNegativeBinomial(TorchDistribution):
    """Counts of a minibatch of cells (one event: cells × genes), independent negative binomials around the mean of
    each cell's group with shape ``concentration``: Var = mean + mean² / concentration.

    The law of Pyro's ``GammaPoisson(concentration, concentration / mean)`` for every count, with the log-density
    rearranged: the terms in the mean depend on a group's counts only through their sum, so they are evaluated once
    per group and gene; Σ log Γ(x+α) − log Γ(α) comes from the per-gene histogram of the counts (and the cells'
    counts above :data:`HISTOGRAM_MAX_COUNT`); the data-only term Σ log(x!) comes precomputed per cell.

    Parameters
    ----------
    group_mean
        Groups × genes.
    concentration
        1 × genes.
    group_ids
        Per cell of the minibatch (long): its row of ``group_mean``.
    count_terms
        :class:`CellCountTerms` of the minibatch's cells.
    """

    arg_constraints: ClassVar[dict] = {"group_mean": constraints.positive, "concentration": constraints.positive}
    support = constraints.independent(constraints.nonnegative_integer, 2)

    def __init__(self, group_mean, concentration, group_ids, count_terms: CellCountTerms, validate_args=None):
        self.group_mean = group_mean
        self.concentration = concentration
        self.group_ids = group_ids
        self.count_terms = count_terms
        event_shape = torch.Size((group_ids.shape[0], group_mean.shape[-1]))
        super().__init__(torch.Size(), event_shape, validate_args=validate_args)

    @property
    def mean(self):
        return self.group_mean[self.group_ids]

    @property
    def variance(self):
        mean = self.mean
        return mean + mean.square() / self.concentration

    def sample(self, sample_shape=()):
        with torch.no_grad():
            shape = self._extended_shape(torch.Size(sample_shape))
            alpha = self.concentration.expand(shape)
            return torch.poisson(dist.Gamma(alpha, alpha / self.mean.expand(shape)).sample())

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        alpha = self.concentration  # 1 × G
        n_groups, n_cells = self.group_mean.shape[0], value.shape[0]
        # counts and cells per group: data only, no gradient; sums of integer counts are exact in float32, and
        # index_put_ accumulates deterministically where torch is asked to (bincount would wait for the GPU)
        group_totals = value.new_zeros(n_groups, value.shape[-1]).index_put_((self.group_ids,), value, accumulate=True)
        group_cells = value.new_zeros(n_groups, 1).index_put_(
            (self.group_ids,), value.new_ones(n_cells, 1), accumulate=True
        )
        per_group = (
            group_totals * torch.log(self.group_mean)
            - (group_totals + group_cells * alpha) * torch.log(alpha + self.group_mean)
        ).sum()
        # Σ_c log Γ(x+α) − log Γ(α) = Σ_j #(x > j) log(α + j); histogram[v, g]: cells with min(x, K) = v (sums of
        # ones: exact, whatever order they are added in)
        K = HISTOGRAM_MAX_COUNT
        histogram = value.new_zeros(K + 1, value.shape[-1]).scatter_add_(
            0, value.clamp(max=K).long(), value.new_ones(()).expand_as(value)
        )
        exceedance = exceedance_table(histogram[1:], 0)  # row j: cells with x > j
        per_count = histogram_log_gamma_terms(exceedance, alpha, count_steps(K, value))
        terms = self.count_terms
        per_count = per_count + large_count_log_gamma_terms(terms.large_values, alpha[0, terms.large_genes], K)
        per_gene = n_cells * (alpha * torch.log(alpha)).sum()
        return per_count + per_group + per_gene - terms.log_factorial.sum()


def expected_counts(mu_fg, y_e, s_eg, t_lg, type_ids, batch_ids, level_ids):
    """Mean counts under the regression, rows × genes, for rows (cells or groups of cells) of the given type, batch
    and covariate levels.

    Parameters
    ----------
    mu_fg
        Signatures, types × genes.
    y_e
        Detection, batches × 1.
    s_eg
        Additive background (ambient RNA), batches × genes.
    t_lg
        Gene effects of covariate levels, levels × genes; ``None`` without covariates.
    type_ids, batch_ids
        Per row (long): its type and batch.
    level_ids
        Rows × covariates (long): the level of each covariate, as an index into ``t_lg``'s rows.
    """
    mean = (mu_fg[type_ids] + s_eg[batch_ids]) * y_e[batch_ids]
    if t_lg is not None:
        # the package multiplies by one-hot(levels) @ t_lg: the effects of several covariates add up
        mean = mean * t_lg[level_ids].sum(-2)
    return mean


class CellGroups(NamedTuple):
    """The groups of cells that share a mean (same type, batch and covariate levels), one row each (long tensors)."""

    types: torch.Tensor  # groups
    batches: torch.Tensor  # groups
    levels: torch.Tensor  # groups × covariates: indices into the stacked covariate levels


class RegressionModule(torch.nn.Module):
    """The generative model of the reference regression; the prior constants live on the module's device.

    Several covariates: their gene effects are SUMMED (T_cg = sum_k t_lg[level_k(c)]), as the cell2location package
    does, so that users switching from it get the same signatures; a product would be the principled choice (with
    K covariates the sum's prior mean is K, which the detection y_e absorbs).

    Parameters
    ----------
    n_cells, n_genes, n_types, n_batches
        Sizes of the reference.
    n_levels
        Levels of all covariates stacked into one axis (0: no covariates, no ``t_lg``).
    priors
        Hyper-parameters.
    """

    def __init__(self, n_cells: int, n_genes: int, n_types: int, n_batches: int, n_levels: int = 0,
                 priors: RegressionPriors = RegressionPriors()):
        super().__init__()
        self.n_cells, self.n_genes, self.n_types = n_cells, n_genes, n_types
        self.n_batches, self.n_levels = n_batches, n_levels
        self.priors = priors
        # one buffer per constant, created once: making tensors on a GPU inside the loop would copy from the host
        for name, value in asdict(priors).items():
            self.register_buffer(name, torch.tensor(float(value)), persistent=False)

    @property
    def latent_sites(self) -> tuple[str, ...]:
        """Names of the model's latent sites, in the order they are drawn."""
        technical = ("t_lg",) if self.n_levels else ()
        return ("mu_fg", "y_e", "a", "m_e", "u_e", "s_eg", *technical, "phi", "v_g")

    def model(self, counts, group_ids, count_terms: CellCountTerms, groups: CellGroups):
        """The generative model, scoring one minibatch of cells.

        Parameters
        ----------
        counts
            Minibatch counts, cells × genes (float).
        group_ids
            Per cell of the minibatch (long): its group, a row of ``groups``.
        count_terms
            :class:`CellCountTerms` of the minibatch's cells.
        groups
            Type, batch and covariate levels of every group of cells in the reference.
        """
        F, G, E, L = self.n_types, self.n_genes, self.n_batches, self.n_levels
        mu_fg = pyro.sample(
            "mu_fg", dist.Gamma(self.signature_shape, self.signature_rate).expand([F, G]).to_event(2)
        )
        y_e = pyro.sample("y_e", dist.Gamma(self.detection_shape, self.detection_rate).expand([E, 1]).to_event(2))

        a = pyro.sample("a", dist.Gamma(self.background_a_shape, self.background_a_rate))
        m_e = pyro.sample(
            "m_e", dist.Gamma(self.background_mean_shape, self.background_mean_rate).expand([E, 1]).to_event(2)
        )
        u_e = pyro.sample("u_e", dist.Exponential(a).expand([E, 1]).to_event(2))
        background_shape = u_e.square().reciprocal()  # E × 1; s_eg has mean m_e and CV u_e
        s_eg = pyro.sample("s_eg", dist.Gamma(background_shape, background_shape / m_e).expand([E, G]).to_event(2))

        t_lg = None
        if L:
            t_lg = pyro.sample(
                "t_lg",
                dist.Gamma(self.technical_shape, self.technical_shape / self.technical_mean).expand([L, G]).to_event(2),
            )

        phi = pyro.sample("phi", dist.Gamma(self.phi_shape, self.phi_rate))
        v_g = pyro.sample("v_g", dist.Exponential(phi).expand([1, G]).to_event(2))
        alpha_g = v_g.square().reciprocal()  # 1 × G

        group_mean = expected_counts(mu_fg, y_e, s_eg, t_lg, groups.types, groups.batches, groups.levels)
        # what a pyro.plate over cells with this subsample would do: the minibatch stands for all n_cells cells
        with pyro.poutine.scale(scale=self.n_cells / counts.shape[0]):
            pyro.sample("x", GroupedNegativeBinomial(group_mean, alpha_g, group_ids, count_terms), obs=counts)

    def initial_values(self, type_average_counts) -> dict:
        """Where the guide starts: ``mu_fg`` at each type's average count + 1e-4, every other site at its prior mean
        (hyper-priors first, then the sites that depend on them).

        Parameters
        ----------
        type_average_counts
            Types × genes: mean count of each gene in each type's cells.
        """
        p = self.priors
        device = type_average_counts.device

        def full(shape, value):
            return torch.full(shape, float(value), device=device)

        a = p.background_a_shape / p.background_a_rate
        m_e = p.background_mean_shape / p.background_mean_rate
        phi = p.phi_shape / p.phi_rate
        values = {
            "mu_fg": type_average_counts.float() + SIGNATURE_INIT_OFFSET,
            "y_e": full((self.n_batches, 1), p.detection_shape / p.detection_rate),
            "a": full((), a),
            "m_e": full((self.n_batches, 1), m_e),
            "u_e": full((self.n_batches, 1), 1 / a),
            "s_eg": full((self.n_batches, self.n_genes), m_e),
            "phi": full((), phi),
            "v_g": full((1, self.n_genes), 1 / phi),
        }
        if self.n_levels:
            values["t_lg"] = full((self.n_levels, self.n_genes), p.technical_mean)
        return values


def build_guide(module: RegressionModule, type_average_counts) -> AutoNormal:
    """The mean-field normal guide in log space (``AutoNormal``, initial scale 0.1), started at
    :meth:`RegressionModule.initial_values`. Its parameters are created on the first call."""
    return AutoNormal(
        module.model,
        init_loc_fn=init_to_value(values=module.initial_values(type_average_counts)),
        init_scale=GUIDE_INIT_SCALE,
    )


def negative_elbo(model, guide, *args):
    """One-sample estimate of -ELBO, differentiable, as a device tensor.

    Every site is reparameterised (Gamma, Exponential and the guide's normals), so this is what Pyro's
    ``Trace_ELBO`` computes; written out because ``Trace_ELBO`` reads the loss back to the host at every step, a
    synchronisation that stalls a GPU. Run it with Pyro's validation off for the same reason.
    """
    guide_trace = pyro.poutine.trace(guide).get_trace(*args)
    model_trace = pyro.poutine.trace(pyro.poutine.replay(model, trace=guide_trace)).get_trace(*args)
    return guide_trace.log_prob_sum() - model_trace.log_prob_sum()


def posterior_summaries(guide: AutoNormal, sites) -> dict:
    """``{site: {"means" | "stds" | "q05" | "q95": tensor}}`` of the guide's log-normal marginals, in closed form."""
    summaries = {}
    with torch.no_grad():
        for site in sites:
            loc = getattr(guide.locs, site)
            scale = getattr(guide.scales, site)
            summaries[site] = lognormal_summaries(loc.detach(), scale.detach())
    return summaries
