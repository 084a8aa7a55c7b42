"""Evaluation: every metric a model supports, asked of the model by capability, never by family.

``dgm.evaluate(model, data, metrics=[...])`` and ``dgm eval RUN --metrics ...`` share this code.
A metric is registered with :func:`metric`, naming the capabilities it needs; every number it
returns carries its unit and its qualifier ("exact", "bound (IWAE k=1000)", ...).
"""
from dgm.eval.core import METRICS, Metric, Plan, Result, Work, evaluate, metric, results_table
from dgm.eval import metrics as _metrics  # noqa: F401  (registers the likelihood metrics)
from dgm.eval import quality as _quality  # noqa: F401  (registers sample-quality and probe metrics)

__all__ = ["METRICS", "Metric", "Plan", "Result", "Work", "evaluate", "metric", "results_table"]
