"""Training checkpoints: a long fit saves its state every N steps and an interrupted run continues from the last one.

A checkpoint holds everything the rest of the fit depends on (variational parameters, optimiser state, step, loss
history, random generator states) and a fingerprint of the inputs and settings, so that ``--resume`` refuses a
checkpoint written for other data. It is written to a temporary name and renamed (``os.replace``), so a crash while
saving leaves the previous checkpoint intact; the step deletes it once its outputs are written.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tissuemap.errors import InputError
from tissuemap.log import logger


def fingerprint(settings: dict, arrays: list) -> str:
    """SHA-256 of ``settings`` (JSON, keys sorted) and of the bytes, dtype and shape of every array in ``arrays``."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.data)
    return digest.hexdigest()


@dataclass
class Checkpointing:
    """Where and how often a fit saves its state, and whether it continues from a saved one.

    Attributes
    ----------
    path
        The checkpoint file (hidden, in the output folder, e.g. ``OUTDIR/.NAME.map.ckpt.pt``).
    every
        Steps (mapping) or epochs (signatures) between checkpoints; 0 saves none.
    resume
        Continue from ``path`` when it exists (a fresh start, logged, when it does not).
    """

    path: Path
    every: int = 0
    resume: bool = False

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        if self.every < 0:
            raise InputError(f"--checkpoint-every {self.every}: must be 0 (no checkpoints) or a positive number")

    def due(self, done: int, total: int) -> bool:
        """Whether to save after ``done`` of ``total`` steps (never after the last: the outputs follow)."""
        return self.every > 0 and done % self.every == 0 and done < total

    def save(self, state: dict, key: str) -> None:
        """Write ``state`` with fingerprint ``key`` atomically (temporary file, then ``os.replace``)."""
        import torch

        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=self.path.name + ".", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(handle, "wb") as stream:
                torch.save({"fingerprint": key, **state}, stream)
            os.replace(temporary, self.path)
        except BaseException:  # a Ctrl-C or full disk while saving: keep the previous checkpoint, drop the partial one
            Path(temporary).unlink(missing_ok=True)
            raise
        logger.debug("checkpoint after step %s written to %s", state.get("step"), self.path)

    def load(self, key: str) -> dict | None:
        """The saved state when resuming and ``path`` exists, else ``None``.

        Raises
        ------
        InputError
            If the checkpoint cannot be read or was written for other inputs or settings.
        """
        import torch

        if not self.resume:
            return None
        if not self.path.is_file():
            logger.info("--resume: no checkpoint %s; training from the start", self.path)
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=False)
        except Exception as err:  # noqa: BLE001  (any unpickling failure means the same to the user)
            raise InputError(f"{self.path}: cannot be read as a checkpoint ({type(err).__name__}); delete it and "
                             "run without --resume") from None
        if not isinstance(state, dict) or state.get("fingerprint") != key:
            raise InputError(f"{self.path}: checkpoint of other inputs or settings (data, options, seed or device); "
                             "rerun with the same ones, or delete it and run without --resume")
        logger.info("--resume: continuing from step %d of %s", state["step"], self.path)
        return state

    def discard(self) -> None:
        """Delete the checkpoint (the outputs it led to are written)."""
        self.path.unlink(missing_ok=True)
