"""The interface every selection method implements, so methods compare at equal compute.

A selector is built from its own config dataclass and a ``SelectionContext`` (what any method may
need: the candidate pool, the target set, the frozen target model, a tokenizer, a device, a run
directory). ``fit`` trains whatever the method needs; ``score`` returns one float per pool sequence,
higher = more useful. ``flops`` reports the compute spent by kind (``training``: proxies, score
models, reference models, probes; ``scoring``: passes over the pool), counted with the project's
one FLOPs model (``models/flops.py``) through ``spend``, for equal-compute comparisons.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from megatron_bliss.data.pool import SequencePool
from megatron_bliss.data.target_set import TargetSet
from megatron_bliss.errors import ConfigError


@dataclass
class SelectionContext:
    pool: SequencePool
    run_dir: Path
    target_set: TargetSet | None = None
    target_model: torch.nn.Module | None = None  # frozen current checkpoint of the target LM
    tokenizer: Any = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    seed: int = 0
    model_preset: str | None = None  # preset of the target (proxies follow its family)

    def target_family(self) -> str:
        """The target's model family (pythia or llama), which proxies and regressors follow: the
        loaded target model decides (the preset name may lag behind it), else the preset."""
        from megatron_bliss.models.presets import get_preset, model_family

        if self.target_model is not None:
            return model_family(self.target_model.config)
        if self.model_preset:
            return get_preset(self.model_preset).family
        raise ConfigError("the target's model family is unknown: give a target model or a preset")


FLOP_KINDS = ("training", "scoring")


@dataclass(frozen=True)
class EarlierRounds:
    """What a pipeline round offers a selector from the rounds before it."""

    round: int
    """The round selecting now (1 for the first selection round)."""
    run_dir: Path
    """The pipeline's run directory, where ``Selector.shared_outputs`` are kept."""
    previous_dir: Path
    """Round r-1's directory (its ``score_model/`` ...; round 1: the warm-up's)."""
    checkpoints: str
    """The round r-1 target's checkpoints: the model this round selects for."""


class Selector(ABC):
    """Base class: subclasses define ``name``, a ``Config`` dataclass, ``score`` and, where they
    differ from the defaults, what they need and what they carry from round to round."""

    name: str = "base"

    @dataclass
    class Config:
        """The method's YAML section (``select: {NAME: {...}}``); unknown keys are errors."""

    uses_target_model: bool = True
    """False for methods that never look at the target model: ``select`` neither loads a
    ``--target-model`` nor warms up a stand-in for them."""
    needs_target_set: bool = True
    """False for methods that score without a target set (checked before any training)."""
    ranks_by_content: bool = True
    """False when the scores say nothing about the sequences (random): reports show no highest-
    and lowest-scored sequences for the method."""
    data_parallel: bool = False
    """True when ``fit``/``score`` run collectives over the default process group, so every rank
    of a multi-rank job must call them (BLISS's bilevel loop, pool scoring); False: rank 0 runs
    the method while the other ranks wait."""
    trains_on_group: bool = False
    """True when ``fit`` may run on a sub-group of a data-parallel job (``group_size``, see
    ``group.py``): ``fitted_state`` then hands what it made to the other ranks, which score."""
    shared_outputs: tuple[str, ...] = ()
    """Folders that ``fit`` writes under the run directory for later rounds to reuse: a pipeline
    keeps the first round's copy in its own run directory."""

    @classmethod
    def carry_over(cls, config: Any, earlier: EarlierRounds) -> dict[str, Any]:
        """Values of this method's section for a pipeline round, taken from earlier rounds
        (merged over the configured ones; ``config`` is the configured section, typed)."""
        return {}

    @classmethod
    def exported_adam_layers(cls, config: Any) -> list[str]:
        """Layers whose AdamW moments every training stage of a pipeline must save with its
        checkpoints (``checkpoint.adam_state_params``) because a later round of this method
        reads them."""
        return []

    def __init__(self, config: Any, context: SelectionContext):
        self.config = config
        self.context = context
        self.flops = dict.fromkeys(FLOP_KINDS, 0.0)  # spent in fit() and score()

    def spend(
        self,
        kind: str,
        model: torch.nn.Module,
        tokens: float,
        pass_kind: str = "forward",
        seq_length: int | None = None,
        lm_head: bool = True,
    ) -> None:
        """Count a ``pass_kind`` pass of ``model`` over ``tokens`` tokens (sequences of
        ``seq_length``, default the pool's) as ``kind`` FLOPs."""
        from megatron_bliss.models.flops import pass_flops

        if kind not in FLOP_KINDS:
            raise ValueError(f"unknown FLOP kind '{kind}' (known: {', '.join(FLOP_KINDS)})")
        length = seq_length or self.context.pool.seq_length
        self.flops[kind] += pass_flops(model.config, tokens, length, pass_kind, lm_head)

    @property
    def total_flops(self) -> float:
        return float(sum(self.flops.values()))

    def fit(self) -> None:  # noqa: B027 - methods without training (random) keep the default
        """Train whatever the method needs (proxies, score models, statistics)."""

    def fitted_state(self) -> Any:
        """What ``score`` needs from ``fit``, picklable (``trains_on_group`` methods)."""
        raise NotImplementedError(f"{self.name} does not train on a sub-group")

    def load_fitted_state(self, fitted: Any) -> None:
        """Take ``fitted_state`` of the group's rank 0 instead of running ``fit``."""
        raise NotImplementedError(f"{self.name} does not train on a sub-group")

    @abstractmethod
    def score(self) -> np.ndarray:
        """float32 scores, one per sequence of ``context.pool``; higher = more useful."""

    def selection_temperature(self, configured: float, scores: np.ndarray) -> float:
        """The Gumbel temperature this selection uses (rank 0's, for data-parallel methods):
        ``configured`` unless the method, having scored, has a reason to sample instead (BLISS's
        ``selection_rule``)."""
        return configured

    def summary(self) -> dict[str, Any]:
        """Method-specific facts for ``selection.json`` (e.g. BLISS's diagnostics)."""
        return {}

    def save(self, run_dir: Path) -> None:  # noqa: B027 - only learned scorers save anything
        """Persist a learned scorer under ``run_dir`` (e.g. ``score_model/``)."""
