"""Training the mapping's guide on minibatches of locations (``tissuemap map --batch-size N``): stochastic variational
inference of the same model, all samples in one joint fit.

Each epoch visits every location once, in a random order (:class:`tissuemap.training.MinibatchEpochs`, its
generator seeded with ``seed + 1``), N locations per step; ``max_epochs`` counts these passes over the data. The
step's objective is :class:`~tissuemap.models.cell2location.minibatch.MinibatchObjective` (an unbiased estimate of the
full-data −ELBO). The guide is held split: the global sites' ``(2, P_global)`` tensor, trained by torch's Adam (as a
full-data fit trains everything), and the per-location ``(2, S, L)`` table, trained row by row by
:class:`~tissuemap.models.row_adam.RowwiseAdam` (why: its module). The guide's noise, for the global sites and the
batch's rows only, comes from a generator seeded with ``seed``. Both generators' states are in a checkpoint, so an
interrupted fit continues with the numbers of an uninterrupted one (bitwise on a CPU).

An epoch's loss is the mean of its steps' losses weighted by their shares of the locations: the −ELBO estimate of one
pass over the data (with equal batches, the plain mean).
"""

from __future__ import annotations

import time

from tissuemap.log import counted, logger


class MinibatchSteps:
    """The state of a minibatch fit and one step of it.

    Parameters
    ----------
    data
        The model's data, ``counts`` a torch sparse CSR tensor
        (:class:`~tissuemap.models.cell2location.minibatch.MinibatchObjective`).
    priors
        Fixed hyper-parameters.
    lr
        Adam learning rate (both optimisers).
    noise
        Generator of the guide's noise (seeded by the caller).
    """

    def __init__(self, data, priors, lr: float, noise):
        import torch

        from tissuemap.models.cell2location import initial_guide_parameters
        from tissuemap.models.cell2location.minibatch import MinibatchObjective
        from tissuemap.models.row_adam import RowwiseAdam

        self.objective = MinibatchObjective(data, priors)
        self.layout = self.objective.layout
        global_part, local = self.layout.split(initial_guide_parameters(data, priors))
        self.global_parameters = global_part.contiguous().requires_grad_()
        self.local_parameters = local.contiguous()
        self.global_optimizer = torch.optim.Adam([self.global_parameters], lr=lr)
        self.local_optimizer = RowwiseAdam(self.local_parameters, lr)
        self.noise = noise

    def step(self, ids):
        """One Adam step on the locations ``ids``; returns the step's loss (0-d, on the device)."""
        import torch

        batch = self.objective.batch(ids)
        local_rows = self.local_parameters[:, batch.ids].requires_grad_()
        n_global, width = self.layout.global_size, self.layout.local_width
        eps = torch.empty(n_global + batch.size * width, dtype=local_rows.dtype, device=local_rows.device)
        eps.normal_(generator=self.noise)
        loss = self.objective.negative_elbo(self.global_parameters, local_rows, eps[:n_global],
                                            eps[n_global:].view(batch.size, width), batch)
        global_grad, local_grad = torch.autograd.grad(loss, [self.global_parameters, local_rows])
        self.global_parameters.grad = global_grad
        self.global_optimizer.step()
        self.local_optimizer.step(batch.ids, local_grad)
        return loss.detach()

    def guide_parameters(self):
        """The trained guide as one ``(2, P)`` tensor in the full-data layout (what export reads)."""
        return self.layout.join(self.global_parameters.detach(), self.local_parameters)

    def state(self) -> dict:
        """What the rest of the fit depends on, for a checkpoint (the batch order's generator is the epochs')."""
        return {
            "global_parameters": self.global_parameters.detach().cpu(),
            "local_parameters": self.local_parameters.cpu(),
            "global_optimizer": self.global_optimizer.state_dict(),
            "local_optimizer": self.local_optimizer.state_dict(),
            "noise": self.noise.get_state(),
        }

    def restore(self, state: dict) -> None:
        """Put a :meth:`state` back in place."""
        import torch

        with torch.no_grad():
            self.global_parameters.copy_(state["global_parameters"])
            self.local_parameters.copy_(state["local_parameters"])
        self.global_optimizer.load_state_dict(state["global_optimizer"])
        self.local_optimizer.load_state_dict(state["local_optimizer"])
        self.noise.set_state(state["noise"])


def fit_minibatch(setup, max_epochs: int, batch_size: int, lr: float, seed: int, progress: bool = True,
                  checkpoint=None, threads: int | None = None, stop=None, early_stopping=None):
    """Train the cell2location guide on ``setup``'s data (counts sparse: ``setup_mapping(..., sparse_counts=True)``)
    for ``max_epochs`` passes over the data, ``batch_size`` locations per step; the options as
    :func:`~tissuemap.mapping.fit.fit_mapping`'s, epochs where it has steps. Returns a
    :class:`~tissuemap.mapping.fit.MappingFit` whose loss has one value per epoch."""
    import torch

    from tissuemap.convergence import judge_convergence, log_convergence
    from tissuemap.mapping.fit import MappingFit, _checkpoint_key, _device_name, _nan_message
    from tissuemap.training import MinibatchEpochs, TrainingLoop, resume_from, train

    started = time.perf_counter()
    data = setup.data
    device = data.counts.device
    n_locations = data.n_locations
    batch_size = min(batch_size, n_locations)
    steps = MinibatchSteps(data, setup.priors, lr, torch.Generator(device=device).manual_seed(seed))
    # the batch order from seed + 1: the two generators must not draw the same stream
    epochs = MinibatchEpochs(n_locations, batch_size, max_epochs, seed + 1, device, steps.step)
    # each step's share of the locations (torch's split: full batches, then the rest)
    sizes = [min(batch_size, n_locations - start) for start in range(0, n_locations, batch_size)]
    shares = torch.tensor(sizes, dtype=epochs.step_losses.dtype, device=device) / n_locations

    def epoch_losses(n: int):
        return epochs.step_losses[:n] @ shares

    def state(done: int) -> dict:
        return {"step": done, **steps.state(), "order": epochs.order.get_state(),
                "losses": epochs.step_losses[:done].cpu()}

    def restore(saved: dict) -> int:
        steps.restore(saved)
        epochs.order.set_state(saved["order"])
        done = int(saved["step"])
        epochs.step_losses[:done] = saved["losses"].to(device)
        return done

    checkpoint_key = _checkpoint_key(setup, max_epochs, lr, seed, batch_size) if checkpoint is not None else None
    first = resume_from(checkpoint, checkpoint_key, restore)
    setup_seconds = time.perf_counter() - started
    logger.info("minibatch training: %s per step, %s per epoch (every spot once per epoch, in a random order); "
                "--max-epochs %d counts passes over the data", counted(batch_size, "spot"),
                counted(epochs.steps_per_epoch, "step"), max_epochs)
    run = train(TrainingLoop(
        name="mapping", unit="epoch", total=max_epochs, run_epoch=epochs.run, losses=epoch_losses,
        diverged=lambda epoch: _nan_message(epoch, "epoch"), state=state, device=device,
        loss_offset=steps.objective.log_factorial_total, progress=progress, checkpoint=checkpoint,
        checkpoint_key=checkpoint_key, stop=stop, early_stopping=early_stopping, threads=threads,
    ), first)
    loss = epoch_losses(run.done).double().cpu().numpy() + steps.objective.log_factorial_total
    fit = MappingFit(
        guide_parameters=steps.guide_parameters(), loss=loss, device=_device_name(device), steps=run.done, lr=lr,
        seed=seed, cuda_graph=False, compiled=False, timed_steps=run.done - first, threads=run.threads,
        seconds={"model_setup": setup_seconds, "training": run.seconds}, batch_size=batch_size,
        early_stopping=early_stopping.record(run.stopped_at, max_epochs) if early_stopping is not None else None,
    )
    logger.info("trained %d epochs (%d steps of %s) in %.1f s (%.2f epochs/s) on %s; final -ELBO %.6g", run.done,
                run.done * epochs.steps_per_epoch, counted(batch_size, "spot"), setup_seconds + run.seconds,
                fit.iterations_per_second, fit.device, loss[-1])
    fit.convergence = judge_convergence(loss, "--max-epochs", "--mapping-epochs")
    log_convergence(fit.convergence, "mapping")
    return fit
