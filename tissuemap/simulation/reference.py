"""The single-cell reference: 10x reactions (batches) of two chemistries, drawn from the true profiles.

Each reaction e has a detection efficiency y_e, an ambient RNA profile s_eg (a fraction of the reaction's average
cell), and a chemistry whose per-gene effect t_g multiplies every count (5' over 3' is a log-normal ratio per gene,
split evenly: t_g = ratio^(-1/2) for 3' and ratio^(1/2) for 5').
Cell c of type f in reaction e with size factor z_c has

    X_cg ~ NB((mu_fg z_c + s_eg) y_e t_g, alpha_g)

which is the cell2location regression model plus per-cell size factors. With ``confounding`` near 1 each type's
cells come mostly from two reactions, so per-type average counts carry those reactions' effects.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tissuemap.simulation.parameters import MIN_CELLS_PER_TYPE, SimulationParameters
from tissuemap.simulation.profiles import RARE
from tissuemap.simulation.sampling import lognormal_mean_one, negative_binomial_csr, overdispersion, random_barcodes

TECHNOLOGIES = ("3prime", "5prime")


def cells_per_type(cell_types: pd.DataFrame, params: SimulationParameters, rng: np.random.Generator) -> np.ndarray:
    """Imbalanced reference cell numbers summing to ``n_cells``: rare types get a few dozen cells; the others at
    least ``MIN_CELLS_PER_TYPE`` plus a log-normal share of the rest."""
    rare = (cell_types["spatial_role"] == RARE).to_numpy()
    sizes = np.full(len(cell_types), MIN_CELLS_PER_TYPE)
    sizes[rare] = rng.integers(params.rare_type_min_cells, params.rare_type_max_cells + 1, rare.sum())
    weights = np.exp(rng.normal(0.0, params.type_size_log_sd, (~rare).sum()))
    rest = params.n_cells - sizes.sum()
    extra = weights / weights.sum() * rest
    whole = np.floor(extra).astype(int)
    # largest remainders take the cells that rounding down left over, so the sizes sum exactly to n_cells
    whole[np.argsort(whole - extra, kind="stable")[: rest - whole.sum()]] += 1
    sizes[~rare] += whole
    return sizes


def batch_probabilities(n_types: int, params: SimulationParameters, rng: np.random.Generator) -> np.ndarray:
    """P(batch | type), types x batches: ``(1 - confounding)`` spread evenly, ``confounding`` on the type's home
    batches. Home batches go round the reactions so every reaction is home to some types."""
    n_batches = params.n_batches
    # never every reaction: with two reactions, confounding puts each type in one of them
    per_type = max(1, min(params.confounded_batches_per_type, n_batches - 1))
    homes = (np.arange(n_types * per_type).reshape(n_types, per_type) + rng.integers(n_batches)) % n_batches
    homes = homes[rng.permutation(n_types)]
    concentrated = np.zeros((n_types, n_batches))
    np.put_along_axis(concentrated, homes, 1.0 / per_type, axis=1)
    return (1 - params.confounding) / n_batches + params.confounding * concentrated


def batch_table(params: SimulationParameters, rng: np.random.Generator) -> pd.DataFrame:
    """Reactions indexed by name (``reaction1``...) with ``technology``, ``detection_efficiency`` (mean 1) and
    ``ambient_fraction``. About a third of the reactions (at least one of two or more) are 5'."""
    n_batches = params.n_batches
    n_five_prime = 0 if n_batches == 1 else max(1, n_batches // 3)
    return pd.DataFrame(
        {
            "technology": [TECHNOLOGIES[0]] * (n_batches - n_five_prime) + [TECHNOLOGIES[1]] * n_five_prime,
            "detection_efficiency": lognormal_mean_one(rng, params.batch_detection_log_sd, n_batches),
            "ambient_fraction": rng.uniform(
                params.batch_ambient_fraction_min, params.batch_ambient_fraction_max, n_batches
            ),
        },
        index=pd.Index([f"reaction{e + 1}" for e in range(n_batches)], name="batch"),
    )


def simulate_reference(profiles: pd.DataFrame, genes: pd.DataFrame, cell_types: pd.DataFrame,
                       params: SimulationParameters, rng: np.random.Generator):
    """Draw the reference.

    Returns
    -------
    reference
        AnnData, cells x genes: raw counts (float32 CSR) in ``X``; ``obs`` ``cell_type``, ``batch``, ``technology``;
        ``var_names`` gene ids, ``var['SYMBOL']``. Cells are grouped by reaction, barcodes suffixed by its number.
    batches
        The reaction table of :func:`batch_table` plus ``n_cells``.
    gene_effects
        Per gene (index: ids): ``technology_effect_5prime`` (the 5'/3' ratio) and the reference ``overdispersion``
        alpha_g.
    """
    import anndata as ad

    n_types, n_batches = len(cell_types), params.n_batches
    type_sizes = cells_per_type(cell_types, params, rng)
    cells_per_type_and_batch = rng.multinomial(type_sizes, batch_probabilities(n_types, params, rng))  # F x E
    cell_type = np.repeat(np.repeat(np.arange(n_types), n_batches), cells_per_type_and_batch.ravel())
    batch = np.repeat(np.tile(np.arange(n_batches), n_types), cells_per_type_and_batch.ravel())
    order = np.lexsort((rng.random(len(batch)), batch))  # grouped by reaction, shuffled within
    cell_type, batch = cell_type[order], batch[order]

    batches = batch_table(params, rng)
    batches["n_cells"] = cells_per_type_and_batch.sum(axis=0)
    technology = (batches["technology"].to_numpy() == TECHNOLOGIES[1]).astype(int)
    five_prime_effect = lognormal_mean_one(rng, params.technology_effect_log_sd, len(genes))
    # each chemistry takes half of the gene's effect (their geometric mean is 1): the true profiles lie between the
    # chemistries, where the regression's technical-effect prior (both levels centred at 1) places them
    half_effect = np.sqrt(five_prime_effect)
    technology_effect = np.vstack([1 / half_effect, half_effect])  # technologies x genes
    alpha = overdispersion(rng, params.overdispersion_rate, len(genes))
    size_factor = lognormal_mean_one(rng, params.cell_size_log_sd, len(batch))

    mu = profiles.to_numpy().T  # types x genes
    batch_composition = cells_per_type_and_batch.T / np.maximum(batches["n_cells"].to_numpy(), 1)[:, None]
    ambient = batches["ambient_fraction"].to_numpy()[:, None] * (batch_composition @ mu)  # batches x genes
    detection = batches["detection_efficiency"].to_numpy()

    def mean_of_rows(rows: slice) -> np.ndarray:
        cells_batch = batch[rows]
        expression = mu[cell_type[rows]] * size_factor[rows, None] + ambient[cells_batch]
        return expression * detection[cells_batch, None] * technology_effect[technology[cells_batch]]

    counts = negative_binomial_csr(rng, mean_of_rows, len(batch), alpha, np.float32)

    barcodes = np.concatenate(
        [random_barcodes(rng, n, suffix=f"-{e + 1}") for e, n in enumerate(batches["n_cells"].to_numpy())]
    )
    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical.from_codes(cell_type, categories=cell_types.index),
            "batch": pd.Categorical.from_codes(batch, categories=batches.index),
            "technology": pd.Categorical.from_codes(technology[batch], categories=list(TECHNOLOGIES)),
        },
        index=pd.Index(barcodes, name=None),
    )
    var = pd.DataFrame({"SYMBOL": genes["SYMBOL"].to_numpy()}, index=pd.Index(genes.index.to_numpy(), name=None))
    gene_effects = pd.DataFrame(
        {"technology_effect_5prime": five_prime_effect, "overdispersion": alpha}, index=genes.index
    )
    return ad.AnnData(X=counts, obs=obs, var=var), batches, gene_effects
