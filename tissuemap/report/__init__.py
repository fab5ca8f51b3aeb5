"""Self-contained HTML reports: one per sample, one for the reference, and a summary of the run.

Each report is a single HTML file with its images embedded, readable offline; see :mod:`tissuemap.report.html`.
"""
