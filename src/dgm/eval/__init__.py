"""Evaluation: every metric a model supports, asked of the model by capability, never by family.

``dgm.evaluate(model, data, metrics=[...])`` and ``dgm eval RUN --metrics ...`` share this code.
A metric is registered with :func:`metric`, naming the capabilities it needs; every number it
returns carries its unit and its qualifier ("exact", "bound (IWAE k=1000)", ...).
"""
from dgm.eval.core import (METRICS, MONITORS, Metric, Plan, Result, Work, build_monitor, evaluate, metric,
                           register_monitor, results_table)
from dgm.eval import metrics as _metrics  # noqa: F401  (registers the likelihood metrics)
from dgm.eval import quality as _quality  # noqa: F401  (registers sample-quality and probe metrics)
from dgm.eval import disentanglement as _disentanglement, rate as _rate  # noqa: F401  (MIG, SAP, DCI; rate-distortion)
from dgm.eval import text_quality as _text_quality  # noqa: F401  (self-BLEU, embedding FID of text)
from dgm.eval import text as _text  # noqa: F401  (topic perplexity and coherence)
from dgm.eval import captions as _captions  # noqa: F401  (caption_match of text-to-image models)
from dgm.eval import duality as _duality, toys as _toys  # noqa: F401  (register the training monitors)

__all__ = ["METRICS", "MONITORS", "Metric", "Plan", "Result", "Work", "build_monitor", "evaluate", "metric",
           "register_monitor", "results_table"]
