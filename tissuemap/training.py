"""The training loop both models share: epochs of full-data steps (mapping) or of random minibatches (signatures).

A model hands :func:`train` a :class:`TrainingLoop`: how to run one epoch (its losses stay on the device), how to read
the per-epoch losses back, how to describe a divergence, and how to capture its state for a checkpoint. The loop
applies the user's CPU threads right before it starts, shows progress (:class:`tissuemap.progress.Progress`), reads
the losses back only when the progress is due (about once a second) and at the end, raises on a NaN or infinite loss
with the model's message, saves checkpoints (:mod:`tissuemap.checkpoint`), stops at SIGTERM or SIGINT with a
checkpoint (:mod:`tissuemap.interruption`) and, given a rule, stops early when the loss levelled off
(:mod:`tissuemap.early_stopping`). An epoch is one call: :class:`FullDataSteps` runs one step on all the data,
:class:`MinibatchEpochs` visits every item once in a seeded random order, a minibatch at a time.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

from tissuemap.errors import InputError
from tissuemap.log import logger

# steps run eagerly before a CUDA graph capture: they allocate what the graph will reuse and compile what must be
WARMUP_STEPS = 3


@dataclass
class TrainingLoop:
    """What :func:`train` needs of a model.

    Attributes
    ----------
    name, unit
        Progress label and its unit (``"mapping"``, ``"step"``; ``"signatures"``, ``"epoch"``).
    total
        Epochs to run (at most, with ``early_stopping``).
    run_epoch
        ``run_epoch(epoch, tick)`` trains one epoch, keeping its losses on the device; calls ``tick(done, n)`` after
        each of its ``n`` steps.
    losses
        ``losses(n)``: the per-epoch losses of the first ``n`` epochs, a tensor on the device.
    diverged
        ``diverged(epoch)``: the error message when epoch ``epoch`` (1-based) was the first with a non-finite loss.
    state
        ``state(done)``: what a checkpoint after ``done`` epochs holds.
    device
        Synchronised (a GPU) before the training time is taken.
    loss_offset
        Added to the losses shown and judged (the mapping's Σ log Γ(x+1), left out of the objective).
    progress
        Show progress (``False``: nothing shown; the checks keep their pace).
    checkpoint, checkpoint_key
        :class:`~tissuemap.checkpoint.Checkpointing` (``None``: none) and the fit's fingerprint.
    stop
        :class:`~tissuemap.interruption.StopRequest` asked after every epoch (``None``: never asked).
    early_stopping
        :class:`~tissuemap.early_stopping.EarlyStopping` (``None``: all epochs).
    threads
        torch's CPU threads, applied right before the loop (``None``: as they are).
    """

    name: str
    unit: str
    total: int
    run_epoch: Callable[[int, Callable[[int, int], None]], None]
    losses: Callable[[int], object]
    diverged: Callable[[int], str]
    state: Callable[[int], dict]
    device: object
    loss_offset: float = 0.0
    progress: bool = True
    checkpoint: object = None
    checkpoint_key: str = ""
    stop: object = None
    early_stopping: object = None
    threads: int | None = None


@dataclass
class TrainingRun:
    """How :func:`train` went: epochs done (``done``), those done before it started (``first``), where early
    stopping ended it (``stopped_at``, else ``None``), torch's CPU threads and the seconds the loop took."""

    done: int
    first: int
    stopped_at: int | None
    threads: int
    seconds: float


def resume_from(checkpoint, key: str, restore: Callable[[dict], int]) -> int:
    """Epochs already done: ``restore(state)`` of the checkpoint to resume from, else 0 (fresh start)."""
    saved = checkpoint.load(key) if checkpoint is not None else None
    return restore(saved) if saved is not None else 0


def train(loop: TrainingLoop, first: int = 0) -> TrainingRun:
    """Run ``loop`` from epoch ``first`` to ``loop.total`` (fewer if it stops early).

    Raises
    ------
    InputError
        With ``loop.diverged``'s message when a loss becomes NaN or infinite.
    TrainingInterrupted
        At a stop signal, after saving a checkpoint (:func:`tissuemap.interruption.stop_training`).
    """
    import torch

    from tissuemap.early_stopping import EARLY_STOPPING_EVERY
    from tissuemap.interruption import stop_training
    from tissuemap.progress import Progress

    if loop.threads is not None:
        from tissuemap.threads import use_threads

        use_threads(loop.threads)  # again: a library may have changed it since the step started
    threads = torch.get_num_threads()
    started = time.perf_counter()
    total, rule, checkpoint = loop.total, loop.early_stopping, loop.checkpoint
    checked = first  # losses before this epoch are known to be finite
    done, stopped_at = total, None
    with Progress(total, loop.name, loop.unit, enabled=loop.progress, initial=first) as bar:
        report = False  # the losses are read back after an epoch in which the progress was due

        def tick(step: int, steps: int) -> None:
            nonlocal report
            if bar.due():
                report = True
                if step < steps:  # within a long epoch: the count only
                    bar.update(epoch + step / steps)

        for epoch in range(first, total):
            report = False
            loop.run_epoch(epoch, tick)
            if report or epoch + 1 == total:
                losses = loop.losses(epoch + 1)
                if not bool(torch.isfinite(losses[checked:]).all()):
                    raise InputError(loop.diverged(int(torch.nonzero(~torch.isfinite(losses))[0]) + 1))
                checked = epoch + 1
                bar.update(epoch + 1, f"loss {float(losses[epoch]) + loop.loss_offset:.4g}")
            # at fixed epochs, not when the progress is due: the same seed must stop at the same epoch
            if rule is not None and (epoch + 1) % EARLY_STOPPING_EVERY == 0 and epoch + 1 < total \
                    and _levelled_off(loop, epoch + 1):
                done = stopped_at = epoch + 1
                break
            if checkpoint is not None and checkpoint.due(epoch + 1, total):
                checkpoint.save(loop.state(epoch + 1), loop.checkpoint_key)
            if loop.stop is not None and loop.stop.signal_name is not None:
                stop_training(loop.stop, checkpoint, lambda: loop.state(epoch + 1), loop.checkpoint_key, epoch + 1,
                              total, f"{loop.unit}s")
    if stopped_at is not None:
        logger.info("early stopping at %s %d of %d: the mean -ELBO of the last %d %ss improved by less than %g "
                    "(relative) on the %d before", loop.unit, stopped_at, total, rule.window, loop.unit,
                    rule.tolerance, rule.window)
    if loop.device.type == "cuda":
        torch.cuda.synchronize(loop.device)
    return TrainingRun(done, first, stopped_at, threads, time.perf_counter() - started)


def _levelled_off(loop: TrainingLoop, done: int) -> bool:
    """Ask the early-stopping rule about the losses so far (only the two windows it compares leave the device)."""
    window = loop.early_stopping.window
    recent = loop.losses(done)[max(0, done - 2 * window):].double().cpu().numpy() + loop.loss_offset
    return loop.early_stopping.should_stop(recent)


class FullDataSteps:
    """Epochs of one step on all the data: ``step()`` returns the step's loss (a 0-d tensor on the device)."""

    def __init__(self, total: int, dtype, device, step: Callable[[], object]):
        import torch

        self.step = step
        self.step_losses = torch.empty(total, dtype=dtype, device=device)

    def run(self, epoch: int, tick: Callable[[int, int], None]) -> None:
        self.step_losses[epoch] = self.step()
        tick(1, 1)

    def losses(self, n: int):
        return self.step_losses[:n]


class MinibatchEpochs:
    """Epochs that visit each of ``n_items`` once, in a random order drawn from a generator seeded with ``seed``, in
    minibatches of ``batch_size``: ``step(item_ids)`` trains on one (a long tensor on the device) and returns its
    loss, scaled to the whole data. An epoch's loss is the mean of its minibatches'."""

    def __init__(self, n_items: int, batch_size: int, total: int, seed: int, device, step: Callable[[object], object]):
        import torch

        self.n_items, self.batch_size, self.device, self.step = n_items, batch_size, device, step
        self.steps_per_epoch = math.ceil(n_items / batch_size)
        self.order = torch.Generator(device=device)
        self.order.manual_seed(seed)
        self.step_losses = torch.zeros(total, self.steps_per_epoch, device=device)

    def run(self, epoch: int, tick: Callable[[int, int], None]) -> None:
        import torch

        order = torch.randperm(self.n_items, generator=self.order, device=self.device)
        for step, item_ids in enumerate(order.split(self.batch_size)):
            self.step_losses[epoch, step] = self.step(item_ids)
            tick(step + 1, self.steps_per_epoch)

    def losses(self, n: int):
        return self.step_losses[:n].mean(1)


def capture_cuda_graph(graph_step: Callable[[], object], run_step: Callable[[int], None], first: int, total: int):
    """Capture ``graph_step`` as a CUDA graph after a few eager warm-up steps ``run_step(step)`` from ``first``.

    Returns the function to call per step (replaying the graph into a static loss) and the number of steps done; on
    a capture failure, logs why and returns ``graph_step`` itself.
    """
    import torch

    warmed_up = min(first + WARMUP_STEPS, total)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for step in range(first, warmed_up):
            run_step(step)
    torch.cuda.current_stream().wait_stream(stream)
    if warmed_up == total:
        return graph_step, warmed_up
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            static_loss = graph_step()
    except RuntimeError as err:  # an op that cannot be captured: train without the graph
        logger.warning("CUDA graph capture failed (%s); training without it", str(err).splitlines()[0])
        return graph_step, warmed_up

    def replay():
        graph.replay()
        return static_loss

    return replay, warmed_up
