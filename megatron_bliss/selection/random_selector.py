"""Random selection: the baseline every method is measured against."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from megatron_bliss.selection.base import Selector


class RandomSelector(Selector):
    name = "random"
    uses_target_model = False
    needs_target_set = False
    ranks_by_content = False

    @dataclass
    class Config:
        pass

    def score(self) -> np.ndarray:
        """Uniform scores from the context seed: top-k of them is a uniform random subset."""
        rng = np.random.default_rng(self.context.seed)
        return rng.random(len(self.context.pool)).astype(np.float32)
