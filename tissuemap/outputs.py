"""All-or-nothing outputs: a step writes into a hidden staging folder and its files appear only when it succeeds.

A crash, a Ctrl-C or a user error inside the ``with`` block leaves the output folder as it was. Publication is
atomic also under SIGKILL: the staging folder is renamed to a publishing folder first (one ``rename``, the commit
point), then its files are moved into place one by one. A publication cut short is completed by the next command that
writes to the folder (:func:`complete_interrupted_publications`), and a staging folder of a killed step, never
committed, is removed: the folder then holds every new file or, for a step killed before its commit, none. While a
step is alive, it holds a lock on its staging folder (``flock``, released by the system when the process dies), so
that a step writing into the same folder at the same time never takes a live step's folder for a dead one's.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from tissuemap.errors import InputError
from tissuemap.log import logger

STAGING_PREFIX = ".tissuemap-staging-"
PUBLISHING_PREFIX = ".tissuemap-publishing-"
# held (flock) by the live step that owns a staging or publishing folder; never published
OWNER_LOCK = ".owner.lock"
# a folder without its lock file this young may belong to a step that is creating it
UNLOCKED_GRACE_SECONDS = 60


def prepare_outdir(outdir: str | os.PathLike) -> Path:
    """Create ``outdir`` (and parents), check it can be written to, and finish what killed steps left in it."""
    path = Path(outdir)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"{path}: cannot create the output folder ({err.strerror}); choose a writable --outdir") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise InputError(f"{path}: the output folder is not writable; choose a writable --outdir")
    complete_interrupted_publications(path)
    return path


def _lock_owner(folder: Path) -> int | None:
    """An open descriptor holding the exclusive lock of ``folder``'s owner lock file, or ``None`` if a live process
    holds it."""
    descriptor = os.open(folder / OWNER_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        return None
    return descriptor


def _move_into(source: Path, target: Path) -> None:
    """Move every file under ``source`` (but the owner lock) to the same place under ``target`` (``os.replace``)."""
    for item in sorted(source.rglob("*")):
        if item.is_file() and item != source / OWNER_LOCK:
            destination = target / item.relative_to(source)
            destination.parent.mkdir(parents=True, exist_ok=True)
            os.replace(item, destination)


def complete_interrupted_publications(folder: str | os.PathLike) -> None:
    """Finish what killed steps left in ``folder``: move the files of a committed publication into place, remove an
    uncommitted staging folder. Folders of live steps (their owner lock held) are left alone."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for leftover in sorted(folder.iterdir()):
        committed = leftover.name.startswith(PUBLISHING_PREFIX)
        if not (leftover.is_dir() and (committed or leftover.name.startswith(STAGING_PREFIX))):
            continue
        try:
            if not (leftover / OWNER_LOCK).exists() and time.time() - leftover.stat().st_mtime < UNLOCKED_GRACE_SECONDS:
                continue
            owner = _lock_owner(leftover)
        except FileNotFoundError:  # another command made good the same folder just now
            continue
        if owner is None:
            continue
        try:
            if committed:
                _move_into(leftover, folder)
                logger.warning("%s: completed the publication of a step killed while moving its outputs", folder)
            else:
                logger.info("%s: removed the unfinished outputs of a killed step (%s)", folder, leftover.name)
        finally:
            os.close(owner)
        shutil.rmtree(leftover, ignore_errors=True)


@contextmanager
def _signals_held() -> Iterator[None]:
    """SIGTERM and SIGINT wait until the block is done (a publication is not cut short by them)."""
    held = {signal.SIGTERM, signal.SIGINT}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@contextmanager
def staged_outputs(outdir: str | os.PathLike) -> Iterator[Path]:
    """Yield a staging folder inside ``outdir``; on success publish every file in it into ``outdir`` at once.

    On any exception inside the block the staging folder and all it holds are removed and the exception propagates.
    On success the folder is renamed to a publishing folder (the commit point) and its files moved into place with
    ``os.replace`` (atomic on one file system, so a reader never sees half a file), SIGTERM and SIGINT held until
    the last one is moved; a SIGKILL in between is made good by the next command writing to ``outdir``.
    """
    final = prepare_outdir(outdir)
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=final))
    owner = _lock_owner(staging)
    try:
        try:
            yield staging
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        publishing = final / (PUBLISHING_PREFIX + staging.name.removeprefix(STAGING_PREFIX))
        with _signals_held():
            os.rename(staging, publishing)
            _move_into(publishing, final)
            shutil.rmtree(publishing, ignore_errors=True)
    finally:
        os.close(owner)
