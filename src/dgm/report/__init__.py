"""Reports: the self-contained HTML page of a run, and pictures of samples."""
from dgm.report.html import write_report

__all__ = ["write_report"]
