"""All-or-nothing outputs: a step writes into a hidden staging folder and its files appear only when it succeeds.

A crash, a Ctrl-C or a user error inside the ``with`` block leaves the output folder as it was.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from tissuemap.errors import InputError


def prepare_outdir(outdir: str | os.PathLike) -> Path:
    """Create ``outdir`` (and parents) and check it can be written to."""
    path = Path(outdir)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"{path}: cannot create the output folder ({err.strerror}); choose a writable --outdir") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise InputError(f"{path}: the output folder is not writable; choose a writable --outdir")
    return path


@contextmanager
def staged_outputs(outdir: str | os.PathLike) -> Iterator[Path]:
    """Yield a staging folder inside ``outdir``; on success move every file in it into ``outdir``.

    Files are moved with ``os.replace`` (atomic on one file system), so a reader never sees half a file. On any
    exception the staging folder and all it holds are removed and the exception propagates.
    """
    final = prepare_outdir(outdir)
    staging = Path(tempfile.mkdtemp(prefix=".tissuemap-staging-", dir=final))
    try:
        yield staging
        for item in sorted(staging.rglob("*")):
            if item.is_file():
                target = final / item.relative_to(staging)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(item, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
