"""Choosing the torch device for training, as the user asked (`--device auto|cpu|cuda`)."""

from __future__ import annotations

from tissuemap.errors import InputError
from tissuemap.log import counted, logger

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def resolve_device(choice: str = "auto"):
    """Return the ``torch.device`` for ``choice``; ``auto`` takes CUDA when present and logs what it chose."""
    import torch

    if choice not in DEVICE_CHOICES:
        raise InputError(f"--device: {choice!r} is not one of {', '.join(DEVICE_CHOICES)}")
    has_cuda = torch.cuda.is_available()
    if choice == "cuda" and not has_cuda:
        raise InputError("--device cuda: no CUDA GPU is visible to torch; use --device cpu or auto, or check the GPU drivers")
    device = torch.device("cuda" if choice == "cuda" or (choice == "auto" and has_cuda) else "cpu")
    if device.type == "cuda":
        logger.info("device: cuda (%s)", torch.cuda.get_device_name(device))
    else:
        logger.info("device: cpu (%s)%s", counted(torch.get_num_threads(), "thread"),
                    "" if choice == "cpu" else ", no CUDA GPU found")
    return device
