"""Figures written by the pipeline steps (matplotlib, Agg backend), one module per step."""
