"""One run at a time writes into a folder: a run holds a lock on ``.tissuemap-run.lock`` (``flock``, released by the
system when the process ends, however it ends)."""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Iterator

from tissuemap.errors import InputError

LOCK_FILE = ".tissuemap-run.lock"


@contextlib.contextmanager
def exclusive_use(outdir: Path) -> Iterator[None]:
    """Hold the run lock of ``outdir`` inside the block (``LOCK_FILE``, holding the process id, removed at the end).

    Raises
    ------
    InputError
        If a live process holds it.
    """
    path = outdir / LOCK_FILE
    while True:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(descriptor, 32).decode(errors="replace").strip() or "?"
            os.close(descriptor)
            raise InputError(f"{outdir}: another tissuemap run (process {holder}) is writing to this folder; wait for "
                             "it to end or choose another --outdir") from None
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path).st_ino == os.fstat(descriptor).st_ino:
                break
        os.close(descriptor)  # a run that just ended removed the file this one locked: lock the new one
    os.ftruncate(descriptor, 0)
    os.write(descriptor, f"{os.getpid()}\n".encode())
    try:
        yield
    finally:
        path.unlink(missing_ok=True)  # while still locked: no other run can hold the removed file's lock
        os.close(descriptor)
