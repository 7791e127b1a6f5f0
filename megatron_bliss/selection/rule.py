"""The selection rule shared by every method (docs/formats.md, "Scores and selections").

``k = floor(fraction * N)``; keep the k highest scores in a stable descending order (ties go to the
lower index); with a Gumbel temperature ``T > 0``, add ``T * Gumbel`` noise drawn from ``seed``
first (Gumbel-top-k: sampling without replacement proportional to ``exp(score / T)``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from megatron_bliss.errors import ConfigError
from megatron_bliss.utils.io import atomic_save_npy, atomic_write_json


def check_selection_settings(fraction: float, gumbel_temperature: float = 0.0) -> None:
    """Reject a fraction or temperature the rule cannot use, before any work is spent."""
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"fraction must be in (0, 1], got {fraction}")
    if not gumbel_temperature >= 0.0:  # also rejects NaN
        raise ConfigError(f"gumbel_temperature must be >= 0, got {gumbel_temperature}")


def check_keeps_some(fraction: float, num_sequences: int) -> None:
    """An empty selection trains on nothing: refuse a fraction that keeps no sequence."""
    if num_sequences and math.floor(fraction * num_sequences) == 0:
        raise ConfigError(
            f"fraction {fraction} of {num_sequences} sequences keeps none "
            f"(floor({fraction} x {num_sequences}) = 0); use at least {1 / num_sequences:.3g}"
        )


def select_top_fraction(
    scores: np.ndarray, fraction: float, seed: int = 0, gumbel_temperature: float = 0.0
) -> np.ndarray:
    """Sorted int64 indices of the kept sequences."""
    check_selection_settings(fraction, gumbel_temperature)
    scores = np.asarray(scores, dtype=np.float64)
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN")
    check_keeps_some(fraction, len(scores))
    k = math.floor(fraction * len(scores))
    ranked = scores
    if gumbel_temperature > 0:
        noise = np.random.default_rng(seed).gumbel(size=len(scores))
        ranked = scores + gumbel_temperature * noise
    order = np.argsort(-ranked, kind="stable")
    return np.sort(order[:k]).astype(np.int64)


def score_statistics(scores: np.ndarray, selection: np.ndarray) -> dict[str, float]:
    scores = np.asarray(scores, dtype=np.float64)
    kept = scores[selection] if len(selection) else np.zeros(0)
    stats = {
        "score_mean": float(scores.mean()) if len(scores) else float("nan"),
        "score_std": float(scores.std()) if len(scores) else float("nan"),
        "score_min": float(scores.min()) if len(scores) else float("nan"),
        "score_max": float(scores.max()) if len(scores) else float("nan"),
    }
    stats["threshold"] = float(kept.min()) if len(kept) else float("nan")
    stats["selected_score_mean"] = float(kept.mean()) if len(kept) else float("nan")
    return stats


def write_selection(
    out_dir: str | Path,
    scores: np.ndarray,
    *,
    method: str,
    fraction: float,
    data_prefix: str,
    seq_length: int,
    seed: int = 0,
    gumbel_temperature: float = 0.0,
    extra: dict[str, Any] | None = None,
    scores_name: str = "scores.npy",
    selection_name: str = "selection.npy",
) -> np.ndarray:
    """Write ``scores.npy`` (or ``scores_name``), ``selection.npy`` (or ``selection_name``) and
    the ``.json`` of the same name into ``out_dir``."""
    out_dir = Path(out_dir)
    scores = np.asarray(scores, dtype=np.float32)
    selection = select_top_fraction(scores, fraction, seed, gumbel_temperature)
    atomic_save_npy(out_dir / scores_name, scores)
    atomic_save_npy(out_dir / selection_name, selection)
    meta = {
        "method": method,
        "fraction": fraction,
        "data_prefix": str(data_prefix),
        "seq_length": int(seq_length),
        "seed": int(seed),
        "gumbel_temperature": float(gumbel_temperature),
        "num_sequences": len(scores),
        "num_selected": len(selection),
        **score_statistics(scores, selection),
        **(extra or {}),
    }
    atomic_write_json((out_dir / selection_name).with_suffix(".json"), meta)
    return selection
