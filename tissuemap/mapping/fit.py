"""Training the mapping's guide (:func:`fit_mapping`): the objective, compiled on a GPU, and the CUDA graph of one
step, run by the shared training loop (:mod:`tissuemap.training`)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np

from tissuemap.convergence import judge_convergence, log_convergence
from tissuemap.defaults import MAPPING_LR, MAPPING_MAX_EPOCHS, MAPPING_SEED
from tissuemap.log import counted, logger
from tissuemap.mapping.data import check_training_options
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


def _nan_message(step: int, unit: str = "step") -> str:
    return (
        f"training diverged (the ELBO became NaN or infinite at {unit} {step}); check that the reference signatures "
        "match the tissue (same species, same genes) and that --n-cells-per-location suits it, or lower --lr"
    )


def fit_mapping(
    setup: MappingSetup,
    max_epochs: int = MAPPING_MAX_EPOCHS,
    lr: float = MAPPING_LR,
    seed: int = MAPPING_SEED,
    cuda_graph: bool = True,
    compile_objective: bool | None = None,
    progress: bool = True,
    checkpoint=None,
    threads: int | None = None,
    stop=None,
    early_stopping=None,
    batch_size: int | None = None,
) -> MappingFit:
    """Train the cell2location guide on ``setup``'s data: ``max_epochs`` full-data steps of Adam (fewer with
    ``early_stopping``), or with ``batch_size`` ``max_epochs`` passes over the data in minibatches.

    The optimiser is torch's Adam with its defaults, which is what the package trains with (scvi-tools'
    ``PyroTrainingPlan`` builds ``pyro.optim.Adam(lr)``, a torch Adam, whatever the package's docstrings say of
    ``ClippedAdam``): the same data, signatures and seed-free settings follow the package's path.

    Parameters
    ----------
    setup
        From :func:`setup_mapping`; its tensors' device is used.
    max_epochs
        Training steps (each sees all the data, as the package's ``max_epochs`` with no minibatching).
    lr
        Adam learning rate.
    seed
        Seed of the guide's noise: the same seed, input and device give the same numbers (bitwise on a CPU; see the
        module's note on reproducibility for GPUs).
    cuda_graph
        On a GPU, capture one training step as a CUDA graph and replay it (falls back to plain steps if capture
        fails). Ignored on CPU.
    compile_objective
        Compile the objective (forward and backward) with ``torch.compile``: fuses its many small operations into a
        few kernels. ``None``: on a GPU only (on CPU it was measured slower for full-size data). A compiled objective
        that fails or disagrees with the plain one on a first evaluation is not used.
    progress
        Show progress (:class:`tissuemap.progress.Progress`: a bar on a terminal, plain log lines otherwise).
    checkpoint
        :class:`~tissuemap.checkpoint.Checkpointing`: save the fit's state every ``checkpoint.every`` steps and, with
        ``checkpoint.resume``, continue from a saved one. A resumed fit gives the numbers of an uninterrupted one
        (bitwise on a CPU).
    threads
        torch's CPU threads, applied right before the training loop (:func:`tissuemap.threads.use_threads`);
        ``None`` leaves torch's setting as it is.
    stop
        :class:`~tissuemap.interruption.StopRequest`, asked after every step: once a signal has set it, the state is
        saved to ``checkpoint`` and :class:`~tissuemap.interruption.TrainingInterrupted` raised.
    early_stopping
        :class:`~tissuemap.early_stopping.EarlyStopping`: asked every
        :data:`~tissuemap.early_stopping.EARLY_STOPPING_EVERY` steps whether the loss has levelled off; training ends
        there if so. ``None``: all steps.
    batch_size
        Locations per step: minibatch training (:func:`tissuemap.mapping.minibatch.fit_minibatch`; ``max_epochs``,
        checkpoints and early stopping then count epochs, passes over the data). ``None``: every step on all the
        data, as the package trains by default.

    Raises
    ------
    InputError
        If the options are out of range, the ELBO becomes NaN (what to check is in the message), or the checkpoint
        to resume from was written for other inputs or settings.
    """
    import torch

    from tissuemap.models.cell2location import MappingObjective, initial_guide_parameters
    from tissuemap.training import FullDataSteps, TrainingLoop, capture_cuda_graph, resume_from, train

    check_training_options(max_epochs, lr, batch_size)
    if batch_size is not None:
        from tissuemap.mapping.minibatch import fit_minibatch

        return fit_minibatch(setup, max_epochs, batch_size, lr, seed, progress, checkpoint, threads, stop,
                             early_stopping)
    started = time.perf_counter()
    data = setup.data
    device = data.counts.device
    objective = MappingObjective(data, setup.priors)
    parameters = initial_guide_parameters(data, setup.priors).requires_grad_()
    # capturable: the step count stays on the GPU, so that a replayed CUDA graph advances the bias corrections
    optimizer = torch.optim.Adam([parameters], lr=lr, capturable=device.type == "cuda")
    generator = torch.Generator(device=device).manual_seed(seed)
    eps = torch.empty(parameters.shape[1], dtype=parameters.dtype, device=device)

    def noisy_step():  # the guide's noise is drawn outside the step a CUDA graph replays
        eps.normal_(generator=generator)
        return step_fn()

    steps = FullDataSteps(max_epochs, parameters.dtype, device, noisy_step)
    losses = steps.step_losses
    negative_elbo, compiled = objective.negative_elbo, False
    if compile_objective if compile_objective is not None else device.type == "cuda":
        negative_elbo, compiled = _checked_compile(negative_elbo, parameters)
    checkpoint_key = _checkpoint_key(setup, max_epochs, lr, seed) if checkpoint is not None else None
    first_step = resume_from(checkpoint, checkpoint_key,
                             lambda state: _restore(state, parameters, optimizer, generator, losses))

    def train_step():
        loss = negative_elbo(parameters, eps)
        (parameters.grad,) = torch.autograd.grad(loss, [parameters])
        optimizer.step()
        return loss.detach()

    use_graph = cuda_graph and device.type == "cuda"
    step_fn, steps_done = train_step, first_step
    if use_graph:
        step_fn, steps_done = capture_cuda_graph(train_step, lambda step: steps.run(step, lambda *_: None),
                                                 first_step, max_epochs)
        use_graph = step_fn is not train_step
    setup_seconds = time.perf_counter() - started

    run = train(TrainingLoop(
        name="mapping", unit="step", total=max_epochs, run_epoch=steps.run, losses=steps.losses,
        diverged=_nan_message, state=lambda step: _training_state(step, parameters, optimizer, generator, losses),
        device=device, loss_offset=objective.log_factorial_total, progress=progress, checkpoint=checkpoint,
        checkpoint_key=checkpoint_key, stop=stop, early_stopping=early_stopping, threads=threads,
    ), steps_done)
    steps_run, stopped_at, training_seconds = run.done, run.stopped_at, run.seconds
    loss = losses[:steps_run].double().cpu().numpy() + objective.log_factorial_total
    fit = MappingFit(
        guide_parameters=parameters.detach(), loss=loss, device=_device_name(device), steps=steps_run, lr=lr,
        seed=seed, cuda_graph=use_graph, compiled=compiled, timed_steps=steps_run - steps_done,
        threads=run.threads,
        seconds={"model_setup": setup_seconds, "training": training_seconds},
        early_stopping=early_stopping.record(stopped_at, max_epochs) if early_stopping is not None else None,
    )
    logger.info("trained %d steps in %.1f s (%.1f it/s) on %s (compiled: %s, CUDA graph: %s); final -ELBO %.6g",
                steps_run, setup_seconds + training_seconds, fit.iterations_per_second, fit.device, compiled,
                use_graph, loss[-1])
    fit.convergence = judge_convergence(loss, "--max-epochs", "--mapping-epochs")
    log_convergence(fit.convergence, "mapping")
    return fit


def _checkpoint_key(setup: MappingSetup, max_epochs: int, lr: float, seed: int, batch_size: int | None = None) -> str:
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


def _training_state(step: int, parameters, optimizer, generator, losses) -> dict:
    """What the rest of a fit depends on after ``step`` steps (saved at once: on a CPU these are live tensors)."""
    return {
        "step": step,
        "parameters": parameters.detach().cpu(),
        "optimizer": optimizer.state_dict(),
        "generator": generator.get_state(),
        "losses": losses[:step].cpu(),
    }


def _restore(state: dict, parameters, optimizer, generator, losses) -> int:
    """Put a saved training state back in place (in-place copies: a CUDA graph captured later sees the same
    tensors); returns the step to continue from."""
    import torch

    with torch.no_grad():
        parameters.copy_(state["parameters"])
    optimizer.load_state_dict(state["optimizer"])  # its tensors go to the parameters' device
    generator.set_state(state["generator"])
    step = int(state["step"])
    losses[:step] = state["losses"].to(losses.device)
    return step


# relative difference between compiled and plain objective (loss and gradient) above which the compiled one is dropped
COMPILE_TOLERANCE = 1e-3


def _checked_compile(negative_elbo, parameters):
    """``(torch.compile(negative_elbo), True)`` if it runs and agrees with ``negative_elbo`` at the guide's median
    (noise 0); else ``(negative_elbo, False)``, with a warning saying why."""
    import torch

    eps = torch.zeros(parameters.shape[1], dtype=parameters.dtype, device=parameters.device)
    compiled = torch.compile(negative_elbo)
    try:
        values = []
        for function in (negative_elbo, compiled):
            loss = function(parameters, eps)
            values.append((loss.detach(), torch.autograd.grad(loss, [parameters])[0]))
    except Exception as err:  # noqa: BLE001  (any compiler failure: train with the plain objective)
        logger.warning("torch.compile of the objective failed (%s); training without it",
                       f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
        return negative_elbo, False
    (loss, grad), (compiled_loss, compiled_grad) = values
    loss_error = float((compiled_loss - loss).abs() / loss.abs().clamp(min=1))
    grad_error = float((compiled_grad - grad).abs().max() / grad.abs().max().clamp(min=1e-12))
    if not (loss_error < COMPILE_TOLERANCE and grad_error < COMPILE_TOLERANCE):
        logger.warning("the compiled objective differs from the plain one (loss %.2g, gradient %.2g relative); "
                       "training without it", loss_error, grad_error)
        return negative_elbo, False
    return compiled, True


def _device_name(device) -> str:
    import torch

    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({counted(torch.get_num_threads(), 'thread')})"


