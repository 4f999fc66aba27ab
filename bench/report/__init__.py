"""Outputs people use: report.md and summary.txt (report.py), plots (plots.py) and pyperf
JSON files (pyperf_export.py) for a results dir."""
