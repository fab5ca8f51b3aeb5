"""The cell2location spatial mapping model (spec §3), tensors in and tensors out (no AnnData here).

- :mod:`.sites`: the one table of the model's latent sites (shape, Gamma prior, prior mean), the data and
  hyper-parameters, and the guide's layout: Pyro's ``AutoNormal`` (a normal distribution per scalar in the log
  space of every site, ``init_to_mean``, initial scale 0.1), all locations and all scales in one ``(2, P)`` tensor
  so that the optimiser updates a single tensor.
- :mod:`.pyro_model`: the generative process in Pyro, derived from the table: the specification (imported on first use
  of ``model``: training and export need neither it nor Pyro).
- :mod:`.objective`: the negative ELBO of one guide sample computed directly in torch, equal to Pyro's
  ``Trace_ELBO`` on the model and much cheaper; its likelihood, written without cancellation at large α and with
  gradients by hand, in :mod:`.likelihood` (which also holds the blocks of non-zero counts and the count tables), its
  Gamma priors' and guide's log-densities in :mod:`.densities`.
- :mod:`.minibatch`: an unbiased estimate of that negative ELBO from a batch of locations, with the same likelihood
  and densities over the batch's rows.
"""

from tissuemap.models.cell2location.objective import MappingObjective
from tissuemap.models.cell2location.sites import (
    BATCH_SITES,
    INIT_SCALE,
    LOCATION_SITES,
    SITE_NAMES,
    SITES,
    MappingData,
    MappingPriors,
    SiteLayout,
    guide_scale,
    initial_guide_parameters,
    prior_means,
)


def __getattr__(name: str):
    if name == "model":
        from tissuemap.models.cell2location.pyro_model import model

        return model
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BATCH_SITES", "INIT_SCALE", "LOCATION_SITES", "SITE_NAMES", "SITES", "MappingData", "MappingObjective",
    "MappingPriors", "SiteLayout", "guide_scale", "initial_guide_parameters", "model", "prior_means",
]
