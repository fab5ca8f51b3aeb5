"""What both ways of training the mapping (:mod:`.fit`, full data; :mod:`.minibatch`) share: the record of a fit
(:class:`MappingFit`), the fingerprint of its checkpoints, the message of a diverged fit and the device's name."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from tissuemap.log import counted
from tissuemap.mapping.setup import MappingSetup


@dataclass
class MappingFit:
    """A trained guide and how training went."""

    guide_parameters: object  # (2, P) torch tensor: locations and unconstrained scales
    loss: np.ndarray  # −ELBO per step, Σ log Γ(x+1) included
    device: str
    steps: int
    lr: float
    seed: int
    cuda_graph: bool
    compiled: bool
    timed_steps: int  # steps inside the timed training loop (warm-up steps before a CUDA graph capture excluded)
    threads: int  # torch's CPU threads when the training loop started
    seconds: dict = field(default_factory=dict)
    convergence: dict = field(default_factory=dict)  # tissuemap.convergence.judge_convergence of the loss
    early_stopping: dict | None = None  # the rule and the step it stopped at (EarlyStopping.record); None: off
    batch_size: int | None = None  # locations per step of a minibatch fit (steps are then epochs); None: full data

    @property
    def iterations_per_second(self) -> float:
        return self.timed_steps / self.seconds["training"] if self.seconds.get("training") else float("nan")


def diverged_message(step: int, unit: str = "step") -> str:
    """What to check when the ELBO becomes NaN or infinite at ``step`` (counted in ``unit``s)."""
    return (
        f"training diverged (the ELBO became NaN or infinite at {unit} {step}); check that the reference signatures "
        "match the tissue (same species, same genes) and that --n-cells-per-location suits it, or lower --lr"
    )


def checkpoint_key_of(setup: MappingSetup, max_epochs: int, lr: float, seed: int, batch_size: int | None = None) -> str:
    """Fingerprint of everything a fit's numbers depend on: the model's data, priors, options and device type."""
    import torch

    from tissuemap.checkpoint import fingerprint

    data = setup.data
    # the optimiser names the state's layout: a checkpoint of an earlier optimiser does not match
    settings = {"model": "mapping", "optimizer": "torch.optim.Adam", "max_epochs": max_epochs, "lr": lr,
                "seed": seed, "device": data.counts.device.type, "priors": asdict(setup.priors)}
    counts = [data.counts]
    if batch_size is not None:  # (the default's settings stay as they were: its checkpoints keep matching)
        settings.update(batch_size=batch_size, optimizer="torch.optim.Adam, RowwiseAdam for the locations")
    if data.counts.layout == torch.sparse_csr:
        counts = [data.counts.crow_indices(), data.counts.col_indices(), data.counts.values()]
    arrays = [*counts, data.batch_index, data.signatures, data.n_cells_per_location, data.detection_alpha,
              data.detection_mean]
    return fingerprint(settings, [tensor.cpu().numpy() for tensor in arrays])


def device_name(device) -> str:
    """The device a fit ran on, for its record and log: the GPU's model, or the CPU threads."""
    import torch

    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({counted(torch.get_num_threads(), 'thread')})"
