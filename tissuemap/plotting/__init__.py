"""Figures written by the pipeline steps, one module per step.

Importing this package selects matplotlib's Agg backend (files only, no display): every figure module imports it
before pyplot.
"""

import matplotlib

matplotlib.use("Agg")
