"""Evaluation: lm-eval-harness zero-shot tasks, held-out perplexity, TensorBoard logging and
per-round reports with plots.

Public API: :func:`evaluate_model` (``megatron-bliss eval``), :func:`log_eval_metrics` and the
``megatron-bliss report`` command in :mod:`megatron_bliss.eval.report`.
"""

from megatron_bliss.eval.harness import evaluate_model, headline_average
from megatron_bliss.eval.tensorboard import log_eval_metrics

__all__ = ["evaluate_model", "headline_average", "log_eval_metrics"]
