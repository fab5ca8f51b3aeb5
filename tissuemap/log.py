"""Logging set-up shared by every command: one ``tissuemap`` logger, messages on stderr."""

from __future__ import annotations

import logging

logger = logging.getLogger("tissuemap")


def configure(verbosity: int = 0) -> None:
    """Send ``tissuemap`` log records to stderr; ``verbosity`` 0 = INFO, 1+ = DEBUG, -1 = WARNING."""
    level = {-1: logging.WARNING, 0: logging.INFO}.get(verbosity, logging.DEBUG)
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
