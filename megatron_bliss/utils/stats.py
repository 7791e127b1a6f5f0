"""Small statistics shared by selectors, diagnostics and benchmarks."""

from __future__ import annotations

import numpy as np


def spearman(predicted: np.ndarray, actual: np.ndarray) -> float:
    """Spearman rank correlation (ties broken by order; the inputs are continuous scores)."""
    if len(actual) < 2:
        return float("nan")
    ranks_p = np.argsort(np.argsort(predicted)).astype(np.float64)
    ranks_a = np.argsort(np.argsort(actual)).astype(np.float64)
    return float(np.corrcoef(ranks_p, ranks_a)[0, 1])
