"""The static HTML report of attribution outputs (``python -m jobs.report``): ``build_report``."""

from pipeline.report.build import build_report

__all__ = ["build_report"]
