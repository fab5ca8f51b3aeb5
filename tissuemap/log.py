"""Logging set-up shared by every command: one ``tissuemap`` logger, messages on stderr."""

from __future__ import annotations

import logging
import sys

logger = logging.getLogger("tissuemap")


class _CurrentStderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record is emitted, not the one of the first command: a command run
    in-process (``tissuemap run``'s steps, click's test runner) may have swapped it since."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def configure(verbosity: int = 0) -> None:
    """Send ``tissuemap`` log records to stderr; ``verbosity`` 0 = INFO, 1+ = DEBUG, -1 = WARNING."""
    level = {-1: logging.WARNING, 0: logging.INFO}.get(verbosity, logging.DEBUG)
    if not logger.handlers:
        handler = _CurrentStderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
