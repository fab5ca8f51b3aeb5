"""The cell2location generative process (spec §3) in Pyro, from the table of its sites.

It is the specification: the tests check that the fast objective (:mod:`.objective`) equals Pyro's ``Trace_ELBO``
on it, loss and gradients.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch

from tissuemap.models.cell2location.sites import LOCATION_SITES, SITES, MappingData, MappingPriors, SiteLayout


def model(data: MappingData, priors: MappingPriors = MappingPriors()) -> None:
    """One Pyro sample site per latent variable of :data:`~.sites.SITES` (Gamma priors; location sites inside the
    ``locations`` plate and the plate of their second axis), then the observed counts, site ``counts``:

        μ_sg = (m_g Σ_f w_sf g_fg + s_eg) y_s,    x_sg ~ NB(μ_sg, α_eg = 1 / v_eg²)   (GammaPoisson(α, α / μ))

    with e the batch of location s.
    """
    layout = SiteLayout.for_data(data, priors)
    locations = pyro.plate("locations", data.n_locations, dim=-2)
    # plates of the second axis of location sites
    columns = {"R": ("groups", priors.n_groups), "F": ("cell_types", data.n_types)}

    def tensor(value) -> torch.Tensor:
        return value if isinstance(value, torch.Tensor) else data.counts.new_tensor(value)

    v = {}
    for site in SITES:
        shape, rate = (tensor(value) for value in site.prior(v, data, priors))
        prior = dist.Gamma(shape, rate).expand(layout.shapes[site.name])
        if site.name not in LOCATION_SITES:
            v[site.name] = pyro.sample(site.name, prior.to_event(2))
        elif site.dims[1] == "1":
            with locations:
                v[site.name] = pyro.sample(site.name, prior)
        else:
            with locations, pyro.plate(*columns[site.dims[1]], dim=-1):
                v[site.name] = pyro.sample(site.name, prior)

    batch = data.batch_index
    mu = (v["m_g"] * (v["w_sf"] @ data.signatures) + v["s_eg"][batch]) * v["y_s"]  # (S, G)
    with locations, pyro.plate("genes", data.n_genes, dim=-1):
        alpha = v["v_eg"].pow(-2)[batch]
        pyro.sample("counts", dist.GammaPoisson(alpha, alpha / mu), obs=data.counts)
