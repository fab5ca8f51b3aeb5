"""Stopping a long fit cleanly: on SIGTERM or SIGINT a training step saves its state and exits with one exit code.

A cluster ends a job at its walltime, and a cloud service reclaims a preemptible instance, with SIGTERM and, seconds
later, SIGKILL. While a fit trains, :func:`stop_on_signals` replaces the handlers of both signals by one that only
records the signal; the training loop asks :attr:`StopRequest.signal_name` at every step (mapping) or epoch
(signatures) and then calls :func:`stop_training`, which writes a checkpoint and raises :class:`TrainingInterrupted`:
the command exits with :data:`EXIT_INTERRUPTED`, which the pipeline retries and ``tissuemap run`` continues from.

Recording instead of raising is what makes the handler reliable: Python's default SIGINT handler raises
KeyboardInterrupt wherever the main thread happens to be, and an exception raised inside a finaliser (``__del__``,
a weakref callback, a garbage collection pass) is printed as "Exception ignored" and dropped, so a Ctrl-C could go
unheeded; a flag set there is not lost. A repeated signal (a cluster sends SIGTERM to every process of the job, and
Nextflow's task wrapper passes one on again) changes nothing: the fit still stops at the next step boundary.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Callable, Iterator

import click

from tissuemap.log import logger

# EX_TEMPFAIL of sysexits.h, "try again later": conf/base.config retries it, `tissuemap run` continues from it
EXIT_INTERRUPTED = 75
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class TrainingInterrupted(click.ClickException):
    """Training stopped at a signal after saving its state.

    A ClickException, so that the command line exits with :data:`EXIT_INTERRUPTED` and a step run inside
    ``tissuemap run`` (click's ``standalone_mode=False``) hands it on to the runner.
    """

    exit_code = EXIT_INTERRUPTED

    def show(self, file=None) -> None:
        logger.warning("%s", self.message)


class StopRequest:
    """The signal that asked the running fit to stop (``signal_name``, e.g. ``"SIGTERM"``), or ``None``."""

    def __init__(self) -> None:
        self.signal_name: str | None = None


@contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """While inside, SIGTERM and SIGINT only set the yielded request's ``signal_name``; the previous handlers come back
    on exit. Outside the main thread (where Python cannot set handlers) the request is never set."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def record(signum, frame):
        if request.signal_name is None:
            request.signal_name = signal.Signals(signum).name

    previous = {signum: signal.signal(signum, record) for signum in STOP_SIGNALS}
    try:
        yield request
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def stop_training(request: StopRequest, checkpoint, state: Callable[[], dict], key: str, done: int, total: int,
                  unit: str) -> None:
    """Save the fit's state (``state()``, after ``done`` of ``total`` ``unit``) with fingerprint ``key`` to
    ``checkpoint`` (a :class:`~tissuemap.checkpoint.Checkpointing`, or ``None``: nothing saved) and raise
    :class:`TrainingInterrupted` saying how to continue."""
    if checkpoint is None:
        raise TrainingInterrupted(f"{request.signal_name}: training stopped after {done} of {total} {unit}; no "
                                  "checkpoint folder was given, so a rerun starts from the beginning")
    checkpoint.save(state(), key)
    raise TrainingInterrupted(
        f"{request.signal_name}: training stopped after {done} of {total} {unit}; its state is saved in "
        f"{checkpoint.path}: run the same command with --resume to continue from there (a retried Nextflow task "
        "and a rerun `tissuemap run` do so by themselves)"
    )
