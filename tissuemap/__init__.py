"""tissuemap: cell2location spatial mapping of cell types, re-implemented in Pyro.

Importing the package is cheap on purpose: heavy libraries (torch, pyro, scanpy) are imported only inside the
functions that need them, so the command line answers ``--help`` at once.
"""

__version__ = "0.1.0"
