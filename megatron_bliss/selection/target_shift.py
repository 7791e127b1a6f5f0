"""Does a learned ranking tell unseen target text from the pool? The test behind ``selection_rule:
auto``.

A score model is trained to raise the pool sequences that move a proxy toward the target set. When
the target set differs from the pool (LAMBADA fiction against C4), it learns what the target looks
like, and target examples it never saw score above the pool. When the target is drawn from the
pool's own distribution (held-out C4 against C4), nothing distinguishes them: held-out target
examples score like any pool sequence, the ranking's top is not more target-like than the rest,
and the pool's own distribution is the best estimate of the target's: every top-k in the
in-distribution efficacy setting loses to random, and so does a sample of ``softmax(logit)``
(README "Efficacy"). The test: a one-sided Mann-Whitney U of held-out target examples' scores
against those of pool documents cut the same way; ``sharp`` (keep the top-k) when p < alpha,
else keep a uniform sample.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

import numpy as np

SAMPLING_TEMPERATURE = 1.0
"""The Gumbel temperature of ``selection_rule: sample``: a draw without replacement from
``softmax(logit)``, the weights the proxy was trained with in the bilevel loop."""


@dataclass(frozen=True)
class ShiftTest:
    """The outcome: the held-out examples' AUC against the pool (0.5: indistinguishable), the
    one-sided p-value of AUC > 0.5, and whether the ranking is trusted sharply (p < alpha)."""

    auc: float
    p_value: float
    target_examples: int
    pool_sequences: int
    alpha: float
    sharp: bool

    def as_dict(self) -> dict:
        return asdict(self)


SHIFT_POOL_DOCUMENTS = 512
"""Pool documents the held-out target examples are compared with."""

MIN_HOLDOUT = 8
"""With fewer held-out examples the test misses even clear shifts too often (AUC 0.75 needs
about 8 at p < 0.01): then nothing is held out and the ranking is trusted, as the paper does."""


def uniform_temperature(scores: np.ndarray) -> float:
    """A Gumbel temperature at which the scores cannot change the order: ``T x Gumbel`` noise
    then ranks alone and the shared selection rule keeps a uniform sample, while
    ``selection.json`` still records a finite temperature for which the rule holds."""
    spread = float(np.ptp(scores)) if len(scores) else 0.0
    return 1e9 * max(spread, 1e-6)


def holdout_split(
    examples: list[np.ndarray], max_examples: int, max_fraction: float = 0.2
) -> tuple[np.ndarray, np.ndarray]:
    """(fit indices, held-out indices) of a target set's examples (their token ids), both
    sorted: ``min(max_examples, floor(max_fraction * n))`` examples are held out (none when
    that is under ``MIN_HOLDOUT``). The examples are chosen by a hash of their tokens, not by
    a seed, so every round of a run holds out the same ones: a score model carried over from
    a round whose loop saw them would rank them above the pool whatever the distributions."""
    held = min(int(max_examples), int(np.floor(max_fraction * len(examples))))
    held = held if held >= MIN_HOLDOUT else 0
    keys = [
        hashlib.blake2b(np.asarray(e, np.int64).tobytes(), digest_size=8).digest() for e in examples
    ]
    order = np.array(sorted(range(len(examples)), key=lambda i: (keys[i], i)), dtype=np.int64)
    return np.sort(order[held:]), np.sort(order[:held])


def pool_document_tails(
    pool, count: int, length: int, eod: int | None, seed: int
) -> list[np.ndarray]:
    """Up to ``count`` random documents of the pool as ``documents`` target examples are made
    (the last ``length`` tokens, no end-of-document token), documents under 2 tokens skipped.
    Pool *sequences* are no comparison: they cut across documents where target examples end at
    one, a difference of form that a score model can learn."""
    rng = np.random.default_rng([int(seed), 43])
    documents = rng.permutation(len(pool.document_lengths))
    tails = []
    for document in documents:
        tail = pool.document_tail(int(document), length, eod)
        if len(tail) >= 2:
            tails.append(tail)
        if len(tails) == count:
            break
    return tails


def shift_test(target_scores: np.ndarray, pool_scores: np.ndarray, alpha: float) -> ShiftTest:
    """Mann-Whitney U (ties averaged, normal approximation for large samples) of target scores
    above pool scores."""
    from scipy.stats import mannwhitneyu

    target_scores = np.asarray(target_scores, dtype=np.float64)
    pool_scores = np.asarray(pool_scores, dtype=np.float64)
    if len(target_scores) == 0 or len(pool_scores) == 0:
        raise ValueError("shift_test needs target and pool scores")
    result = mannwhitneyu(target_scores, pool_scores, alternative="greater")
    auc = float(result.statistic) / (len(target_scores) * len(pool_scores))
    p_value = float(result.pvalue)
    return ShiftTest(
        auc=auc, p_value=p_value, target_examples=len(target_scores),
        pool_sequences=len(pool_scores), alpha=float(alpha), sharp=p_value < alpha,
    )  # fmt: skip
