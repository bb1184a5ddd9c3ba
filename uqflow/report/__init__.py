"""Figures, statistics and the HTML report over the results store.

``build_report`` is what ``uqflow report`` runs; ``load_study``, the functions of
:mod:`uqflow.report.figures` and :mod:`uqflow.report.stats` are what the notebook calls.
"""

from uqflow.report.build import ANALYSIS_TAG, ReportResult, build_report, summarise
from uqflow.report.data import Study, load_study

__all__ = ["ANALYSIS_TAG", "ReportResult", "Study", "build_report", "load_study", "summarise"]
