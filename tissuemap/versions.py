"""Versions of Python, tissuemap and the libraries it runs on: what a report or a run records beside its numbers.

Plain Python only (``importlib.metadata``), so that any layer may ask, from the command line down to a report.
"""

from __future__ import annotations

import re
import sys
from importlib import metadata

from tissuemap import __version__

# The libraries that shape a report's numbers; versions.json records every installed package.
KEY_PACKAGES = ("anndata", "scanpy", "numpy", "scipy", "pandas", "torch", "pyro-ppl", "matplotlib", "h5py")


def package_versions(every: bool = False) -> dict[str, str]:
    """Versions of Python, tissuemap and the libraries that shape its numbers (``every``: of every installed
    package)."""
    versions = {"python": sys.version.split()[0], "tissuemap": __version__}
    if every:
        # names normalised as pip compares them (PEP 503): "Jinja2" -> "jinja2", "pyro_ppl" -> "pyro-ppl"
        installed = {re.sub(r"[-_.]+", "-", dist.metadata["Name"]).lower(): dist.version
                     for dist in metadata.distributions() if dist.metadata["Name"]}
        return {**versions, **dict(sorted(installed.items()))}
    for name in KEY_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions
