"""BLISS: bilevel data selection with a proxy LM and a score model (method-spec section 1).

One outer step of ``BlissSelector.fit`` (global batch split over ranks):

1. ``inner_steps`` lower-level steps on the proxy: ``sum_i P_i CE_i + gamma * KL(target || proxy)
   + reg * ||theta_p||^2`` with ``P = softmax(scores)`` over the global batch; AdamW, clip 1.0.
2. ``grad f``: the proxy's loss on a target-set batch (token mean over the global batch).
3. On a fresh training batch: the lower gradient with its graph (``hypergrad.LowerGraph``), a
   solver for ``z ~ (H + lamb I)^-1 grad f`` (``solvers.py``), every ``c_i = g_i . z`` from one
   extra backward, and the score model's gradient from the surrogate ``-sum_i softmax(s)_i c_i``
   (equal to the implicit hypergradient; all-reduced); AdamW on the score model.

The proxy restarts from its warm-up checkpoint every round (``proxy_init``; warmed up here when not
given and saved to ``RUN_DIR/proxy_warmup/`` for later rounds), the score model carries over
(``score_model_init``; round 1: the warm-up proxy's backbone with a new head).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from megatron_bliss.data.target_set import TargetSet
from megatron_bliss.errors import ConfigError, MissingFileError
from megatron_bliss.selection import hypergrad as hg
from megatron_bliss.selection.base import EarlierRounds, Selector
from megatron_bliss.selection.hypergrad import NORMALIZATIONS, normalize_dots
from megatron_bliss.selection.proxy import (
    build_proxy,
    cosine_with_warmup,
    evaluation,
    lm_logits,
    pool_batch,
    resolve_proxy_preset,
    sdpa_math,
    sequence_ce,
    sequence_kl,
    sequence_losses,
    target_loss_sum,
    token_ce,
    token_consistent_dots,
    token_losses,
    warmup_lm,
    weighted_lower_loss,
)
from megatron_bliss.selection.score_model import (
    LikelihoodRatioScoreModel,
    ScoreModel,
    load_score_model,
)
from megatron_bliss.selection.scoring import score_pool, score_rows
from megatron_bliss.selection.solvers import NEEDS_HVP, SOLVERS, Direction, SolverSettings
from megatron_bliss.selection.target_shift import (
    SAMPLING_TEMPERATURE,
    SHIFT_POOL_DOCUMENTS,
    ShiftTest,
    holdout_split,
    pool_document_tails,
    shift_test,
    uniform_temperature,
)
from megatron_bliss.utils.stats import spearman

logger = logging.getLogger(__name__)


VARIANTS = ("default", "paper")
TARGET_DTYPES = ("auto", "float32", "bfloat16", "float64")
DOTS = ("auto", "fd", "jvp", "graph")
DIRECTION_PARAMS = ("all", "blocks")
RANKINGS = ("score_model", "alignment")
WEIGHTS = ("gibbs", "paper")
SCORE_HEADS = ("regression", "likelihood_ratio")
SCORE_PARAMS = ("all", "blocks")
ALIGNMENTS = ("dot", "consistency", "cosine")
SELECTION_RULES = ("auto", "top_k", "sample")
PASS_OF_DOTS = {"auto": "fd", "fd": "fd", "jvp": "jvp"}
# The authors' algorithm (method-spec 1.3), applied over the keys when ``variant: paper``.
PAPER_SETTINGS = {
    "solver": "paper", "paper_loops": 3, "paper_lr": 1e-2, "lamb": 1e-2, "normalize": "none",
    "dots": "graph", "upper_batch_size": None, "direction_params": "all", "weights": "paper",
    "score_head": "regression", "selection_rule": "top_k", "alignment": "dot",
}  # fmt: skip


class BlissSelector(Selector):
    name = "bliss"

    @dataclass
    class Config:
        """Defaults are the paper's scale (method-spec 1.3); configs/select_tiny_cpu.yaml shrinks them."""

        proxy_preset: str = "auto"
        """Proxy/score backbone preset; ``auto``: pythia-160m (Pythia targets), llama-tiny (LLaMA)."""
        proxy_init: str | None = None
        """Hugging Face directory of the warmed-up proxy (reset point of every round), or
        ``target``: a copy of the frozen target (no proxy warm-up; the proxy has the target's
        shape, which suits tiny targets and pipelines whose target is already warm)."""
        score_model_init: str | None = None
        """Previous round's ``score_model/`` (carried over); none: warm-up proxy + new head."""
        proxy_warmup_steps: int = 1000
        """Warm-up of the proxy on random pool sequences when ``proxy_init`` is not given."""
        proxy_warmup_lr: float = 1e-3
        proxy_warmup_batch_size: int = 32
        outer_steps: int = 3000
        """Score-model (upper-level) steps per round."""
        inner_steps: int = 1
        """Proxy (lower-level) steps per outer step (paper: 1 or 5)."""
        batch_size: int = 32
        """Global training batch (sequences) per step, split over ranks (paper: 4 x 8 GPUs)."""
        target_batch_size: int = 32
        """Global target-set batch for ``grad f``."""
        lr_proxy: float = 1e-5
        lr_score: float = 1e-5
        weight_decay: float = 0.1
        beta1: float = 0.9
        beta2: float = 0.95
        grad_clip: float = 1.0
        warmup_fraction: float = 0.1
        """Linear LR warm-up fraction of the cosine schedules of both levels."""
        gamma: float = 1e-2
        """Weight of KL(target || proxy) per token in the lower objective (scripts/run.sh)."""
        reg: float = 1e-7
        """L2 weight on the proxy's parameters in the lower objective."""
        variant: str = "default"
        """``default``: the measured best settings below; ``paper``: the authors' algorithm
        exactly (solver ``paper``: z0 = 1/numel, 3 clipped steps of 1e-2, every outer step from
        scratch; raw ``c_i``; dots by double backward), whatever the keys below say."""
        solver: str = "unrolled"
        """Direction z: ``adam`` (Adam moments of grad f across outer steps), ``identity``
        (z = grad f), ``cg`` or ``paper`` (solvers of (H + lamb I) z = grad f), or
        ``unrolled`` (minus the displacement of a proxy copy after ``unroll_steps`` AdamW steps on
        the target set); see solvers.py."""
        unroll_steps: int = 50
        unroll_lr: float = 1e-3
        """The ``unrolled`` copy's AdamW steps (cosine schedule, 10% warm-up) and peak LR; its
        batches are ``target_batch_size`` target-set examples."""
        ranking: str = "score_model"
        """What ranks the pool: the trained ``score_model`` (BLISS), or ``alignment``: the direct
        ``g_i . z`` of every pool sequence at the final proxy, with the z the score model
        learned from (two proxy forwards per sequence; a study of what the score model's fit
        costs, not the paper's method; every scoring rank needs the proxy, so the selection
        group must be the whole job)."""
        unroll_refresh: int = 0
        """Recompute the ``unrolled`` z every this many outer steps, from the current proxy
        (0: once per round, at the first outer step)."""
        weights: str = "gibbs"
        """How scores weight the lower level's batch: ``gibbs``, ``P = softmax(logit)`` with the
        upper objective regularised by ``temperature * KL(P || uniform)``, whose optimum is
        ``logit = c / temperature``: the score model fits the alignment (a regression with a
        residual) instead of only pushing scores along it; or ``paper``, ``P =
        softmax(sigmoid(logit))`` unregularised as the authors (weights within a factor e of each
        other; the upper level saturates the sigmoid into an above/below-average classifier)."""
        temperature: float = 2.0
        """``gibbs`` only: the KL weight, in units of the standardised ``c`` (the logits then
        spread about ``1 / temperature`` per standard deviation of ``c``)."""
        score_head: str = "likelihood_ratio"
        """The score model's form (score_model.py): ``likelihood_ratio``, ``score_scale`` times
        the loss of a frozen copy of the warm proxy minus that of a trained copy (it represents
        ``g_i . z`` to first order for every sequence, so it also ranks text a pooled head cannot
        tell apart, such as shuffled words; two LM forwards per scored sequence, and trained
        without weight decay, which would move every score alike); or ``regression``, the
        authors' pooled linear head on a copy of the proxy's backbone (half the cost)."""
        score_params: str = "all"
        """``likelihood_ratio`` only: which parameters of the trained copy move, ``all`` or the
        transformer ``blocks`` (token embeddings and LM head stay the warm proxy's)."""
        score_scale: float = 3.0
        """``likelihood_ratio`` only: the logit per nat of loss ratio. With Adam what matters is
        ``score_scale * lr_score``, the logit change per step."""
        selection_rule: str = "auto"
        """How the ranked pool becomes a selection: ``top_k`` (the paper: the highest scores);
        ``sample`` (Gumbel-top-k at temperature 1: a draw from ``softmax(logit)``, the weights
        the proxy trained with); or ``auto``: top-k when the trained ranking scores held-out
        target examples above the pool (one-sided Mann-Whitney, p < ``shift_alpha``), else
        a uniform sample. When unseen target text scores like pool text (a target drawn from the
        pool's own distribution), the pool's own distribution is the best estimate of the
        target's, and any tilt of it, a top-k or a softmax sample, only moves the data away
        (target_shift.py). A configured ``gumbel_temperature`` > 0 always wins."""
        holdout_examples: int = 64
        """``auto``: target examples kept out of the bilevel loop for that test (at most a fifth
        of the target set; a set of under 40 examples holds none and selects top-k)."""
        shift_alpha: float = 0.05
        """``auto``: the test's significance level. A pool with a minority of junk and a target
        of clean text from the same source is a shift too (top-k removes the junk), and a small
        one: with 20% junk that scores below the text, clean target text sits at AUC about
        0.8 x 0.5 + 0.2 = 0.6, which 51 held-out examples (a target set of 256) show at p about
        0.02 (normal approximation)."""
        normalize: str = "standardize"
        """``c_i = g_i . z`` as the score model sees it: ``standardize`` (per global batch) or
        ``none`` (raw, as the authors)."""
        alignment: str = "cosine"
        """What ``c_i`` is, from the per-token alignments ``d_t = grad l_t . z`` of sequence i:
        ``cosine``, ``g_i . z / ||g_i||`` as LESS ranks (both terms from per-sample gradients:
        a forward-backward per sequence instead of the dot's two forwards; ``dots`` then only
        matters for solvers that build the lower graph); ``dot``, the raw ``g_i . z = mean_t
        d_t`` (the first-order change of its loss along z), which text made of a few token types
        the proxy gets badly wrong, repeated (runs of spaces), tops
        (``benchmarks/results/bliss_top_sequences_study.md``); or ``consistency``, ``mean_t d_t
        / sqrt(mean_t d_t^2)``, how evenly the tokens move the target's way (needs per-token
        dots: ``fd`` or ``jvp``). Measured in README "Efficacy"."""
        per_sample_chunk: int = 16
        """``cosine``: rows whose per-sample gradients are held at once (memory: this many
        copies of the proxy's parameters, about 10 GB for a pythia-160m proxy in float32)."""
        dots: str = "auto"
        """How ``c_i`` is computed: ``fd`` (central difference of two inference forwards),
        ``jvp`` (forward-mode AD), ``graph`` (double backward through the lower gradient),
        ``auto`` (fd unless the solver needs Hessian-vector products, which build the graph)."""
        direction_params: str = "all"
        """Where z lives: ``all`` parameters, or the transformer ``blocks`` only (z is zero on
        the token embeddings, the final norm and the LM head, so ``c_i`` measures how a
        sequence moves the layers that model context, not the unigram statistics the
        embeddings and head hold, which shuffled or repeated text shares with real text)."""
        upper_batch_size: int | None = None
        """Pool sequences per outer step whose ``c_i`` trains the score model (none: batch_size).
        With jvp dots they are cheap, so many more draws per pool sequence fit the same time."""
        adam_beta1: float = 0.9
        adam_beta2: float = 0.99
        adam_eps: float = 1e-8
        """Moments of the ``adam`` direction (over outer steps)."""
        diagnostic_sequences: int = 256
        """After training: Spearman correlation of the score model with the direct alignment
        ``g_i . z`` it is meant to learn, with the proxy's loss and with the gradient norm, on
        this many random pool sequences (0: off). Logged and written to bliss_diagnostics.json."""
        lamb: float = 1e-2
        """Damping of the linear system (H + lamb I) z = grad f."""
        paper_loops: int = 3
        paper_lr: float = 1e-2
        cg_iters: int = 10
        cg_tol: float = 1e-3
        head_init_std: float = 0.02
        """Std of the new score head; small so the sigmoid starts unsaturated (scores ~0.5)."""
        score_batch_size: int = 64
        """Sequences per forward pass when scoring the pool."""
        score_precision: str = "auto"
        """Pool scoring precision: auto = bf16 on GPUs and bf16-capable CPUs, else float32."""
        log_interval: int = 10
        dtype: str = "float32"
        """Proxy/score-model precision for the bilevel loop (float64: exact tests)."""
        target_dtype: str = "auto"
        """The frozen target's precision (it only runs forwards for the KL): ``auto`` =
        bfloat16 on CUDA with a float32 loop (half the memory of a float32 copy on every rank
        of the selection group; the KL's softmaxes still run in float32), else ``dtype``;
        or ``float32``, ``bfloat16``, ``float64``."""

        def __post_init__(self):
            if self.variant not in VARIANTS:
                raise ValueError(f"variant '{self.variant}' is not one of {', '.join(VARIANTS)}")
            if self.variant == "paper":
                for name, value in PAPER_SETTINGS.items():
                    setattr(self, name, value)
            if self.dtype not in ("float32", "float64"):
                raise ValueError(f"dtype '{self.dtype}' is not float32 or float64")
            if self.target_dtype not in TARGET_DTYPES:
                raise ValueError(
                    f"target_dtype '{self.target_dtype}' is not one of {', '.join(TARGET_DTYPES)}"
                )
            choices = {
                "solver": SOLVERS, "normalize": NORMALIZATIONS, "dots": DOTS,
                "direction_params": DIRECTION_PARAMS, "ranking": RANKINGS, "weights": WEIGHTS,
                "score_head": SCORE_HEADS, "selection_rule": SELECTION_RULES,
                "score_params": SCORE_PARAMS, "alignment": ALIGNMENTS,
            }  # fmt: skip
            for name, known in choices.items():
                if getattr(self, name) not in known:
                    raise ValueError(
                        f"{name} '{getattr(self, name)}' is not one of {', '.join(known)}"
                    )
            if self.dots in ("fd", "jvp") and self.solver in NEEDS_HVP:
                raise ValueError(f"solver '{self.solver}' needs dots 'graph' (its HVPs build it)")
            graph_dots = self.dots == "graph" or self.solver in NEEDS_HVP
            if self.alignment == "consistency" and graph_dots:
                raise ValueError("alignment 'consistency' needs dots 'fd' or 'jvp' (per token)")
            if not self.score_scale > 0:
                raise ValueError(f"score_scale must be > 0, got {self.score_scale}")
            if not self.temperature > 0:
                raise ValueError(f"temperature must be > 0, got {self.temperature}")
            if self.unroll_refresh < 0:
                raise ValueError("unroll_refresh must be >= 0")
            if self.holdout_examples < 0:
                raise ValueError("holdout_examples must be >= 0")
            if not 0 < self.shift_alpha < 1:
                raise ValueError(f"shift_alpha must be in (0, 1), got {self.shift_alpha}")
            names = ("outer_steps", "batch_size", "target_batch_size", "upper_batch_size",
                     "per_sample_chunk")  # fmt: skip
            for name in names + ("unroll_steps",):
                if getattr(self, name) is not None and getattr(self, name) < 1:
                    raise ValueError(f"{name} must be >= 1")

        @property
        def draws_per_step(self) -> int:
            return self.upper_batch_size or self.batch_size

        @property
        def entropy_weight(self) -> float:
            """The upper level's KL weight: ``temperature`` with gibbs weights, else none."""
            return self.temperature if self.weights == "gibbs" else 0.0

    shared_outputs = ("proxy_warmup",)  # the warm-up proxy: every round resets to it
    data_parallel = True  # the bilevel loop and the pool scoring all-reduce over the ranks
    trains_on_group = True  # the bilevel loop may run on a sub-group (fitted_state)

    @classmethod
    def carry_over(cls, config, earlier: EarlierRounds) -> dict:
        """The pipeline's warm-up proxy (made by round 1) and round r-1's score model."""
        carry = {}
        if (earlier.run_dir / "proxy_warmup" / "config.json").exists():
            carry["proxy_init"] = str(earlier.run_dir / "proxy_warmup")
        if earlier.round > 1:
            carry["score_model_init"] = str(earlier.previous_dir / "score_model")
        return carry

    def __init__(self, config, context):
        super().__init__(config, context)
        self.proxy: torch.nn.Module | None = None
        self.score_model: ScoreModel | LikelihoodRatioScoreModel | None = None
        self.direction: Direction | None = None
        self.history: list[dict] = []
        self.diagnostics: dict[str, float] = {}
        self.seconds = {"warmup": 0.0, "bilevel": 0.0, "scoring": 0.0}
        self.holdout: TargetSet | None = None  # ``selection_rule: auto``: kept out of the loop
        self.shift: ShiftTest | None = None

    # ----------------------------------------------------------------------------------- set-up
    def _vocab_size(self) -> int:
        target = self.context.target_model
        if target is not None:
            return int(target.config.vocab_size)
        from megatron_bliss.models.presets import padded_vocab_size

        if self.context.tokenizer is not None:
            return padded_vocab_size(len(self.context.tokenizer))
        return padded_vocab_size(self.context.pool.max_token_id() + 1)

    def _proxy_preset(self) -> str:
        return resolve_proxy_preset(self.config.proxy_preset, self.context.target_family())

    def prepare_proxy(self) -> torch.nn.Module:
        """The warm-up proxy: loaded from ``proxy_init`` or trained here and saved for reuse."""
        device = self.context.device
        if self.config.proxy_init == "target":
            if self.context.target_model is None:
                raise ConfigError("bliss.proxy_init 'target' needs a target model (--target-model)")
            proxy = copy.deepcopy(self.context.target_model)
            for parameter in proxy.parameters():
                parameter.requires_grad_(True)
            return proxy.to(device)
        if self.config.proxy_init:
            from transformers import AutoModelForCausalLM

            path = Path(self.config.proxy_init)
            if not (path / "config.json").exists():
                raise MissingFileError(f"{path}/config.json: proxy_init is not a model directory")
            proxy = AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa")
            return proxy.to(device)
        pool = self.context.pool
        proxy = build_proxy(self._proxy_preset(), self._vocab_size(), pool.seq_length + 1)
        torch.manual_seed(self.context.seed)
        start = time.perf_counter()
        trained = warmup_lm(
            proxy,
            pool,
            steps=self.config.proxy_warmup_steps,
            batch_size=self.config.proxy_warmup_batch_size,
            lr=self.config.proxy_warmup_lr,
            seed=self.context.seed + 1,
            device=device,
            desc="proxy warm-up",
        )
        if hg.rank() == 0:  # every rank trains the same replica: counted once
            self.spend("training", proxy, trained * self.context.pool.seq_length, "train")
        self.seconds["warmup"] += time.perf_counter() - start
        broadcast_parameters(proxy)
        if hg.rank() == 0:
            proxy.save_pretrained(self.context.run_dir / "proxy_warmup")
        return proxy

    def prepare_score_model(self, warm_proxy: torch.nn.Module):
        c = self.config
        if c.score_model_init:
            return load_score_model(c.score_model_init, self.context.device).train()
        if c.score_head == "likelihood_ratio":
            return LikelihoodRatioScoreModel.from_causal_lm(warm_proxy, c.score_scale).train()
        return ScoreModel.from_causal_lm(warm_proxy, c.head_init_std, self.context.seed).train()

    # ------------------------------------------------------------------------------- main loop
    def fit(self) -> None:
        if self.context.target_set is None:
            raise ConfigError("bliss needs a target set (--target-data)")
        if self.config.gamma > 0 and self.context.target_model is None:
            raise ConfigError("bliss with gamma > 0 needs a frozen target model (--target-model)")
        world = hg.world_size()
        for name in ("batch_size", "target_batch_size"):
            if getattr(self.config, name) % world:
                raise ConfigError(f"bliss.{name} must be divisible by the {world} ranks")
        self._hold_out_target_examples()
        dtype = getattr(torch, self.config.dtype)
        target, target_dtype = self.context.target_model, self._target_dtype(dtype)
        if target is not None and self.config.proxy_init != "target":  # already during a warm-up
            target.to(target_dtype)
        warm_proxy = self.prepare_proxy().to(dtype)  # ``proxy_init: target`` copies it first
        if target is not None:
            target.to(target_dtype)
        self.score_model = self.prepare_score_model(warm_proxy).to(dtype)
        if self.config.score_params == "blocks" and isinstance(
            self.score_model, LikelihoodRatioScoreModel
        ):
            freeze_outside_blocks(self.score_model.lm)
        self.proxy = copy.deepcopy(warm_proxy).train()
        del warm_proxy
        self._train()
        training = torch.tensor([self.flops["training"]], dtype=torch.float64)
        self.flops["training"] = float(hg.all_reduce_sum([training])[0])  # ranks spent shares

    def _hold_out_target_examples(self) -> None:
        """``selection_rule: auto``: set ``holdout_examples`` target examples aside (the same
        ones on every rank and in every round); the bilevel loop sees the rest. Not with
        ``ranking: alignment``, a study of the ranking, which keeps the top-k."""
        if self.config.selection_rule != "auto" or self.config.ranking == "alignment":
            return
        target_set = self.context.target_set
        tokens = [example.input_ids for example in target_set.examples]
        fit, held = holdout_split(tokens, self.config.holdout_examples)
        if len(held) == 0:
            logger.info("bliss: %d target examples are too few to hold any out: top-k",
                        len(target_set))  # fmt: skip
            return
        self.holdout = target_set.subset(held)
        self.context = dataclasses.replace(self.context, target_set=target_set.subset(fit))

    def _target_dtype(self, loop_dtype: torch.dtype) -> torch.dtype:
        if self.config.target_dtype != "auto":
            return getattr(torch, self.config.target_dtype)
        on_cuda = self.context.device.type == "cuda"
        return torch.bfloat16 if on_cuda and loop_dtype == torch.float32 else loop_dtype

    def fitted_state(self) -> ScoreModel:
        """The trained score model (the whole module, buffers included), for the ranks outside
        the selection group: they score with it."""
        return copy.deepcopy(self.score_model).cpu()

    def load_fitted_state(self, fitted: ScoreModel) -> None:
        self.score_model = fitted.to(self.context.device)

    def _optimizer(self, model: torch.nn.Module, lr: float):
        c = self.config
        decay = 0.0 if isinstance(model, LikelihoodRatioScoreModel) else c.weight_decay
        trained = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trained, lr=lr, betas=(c.beta1, c.beta2), weight_decay=decay)
        schedule = cosine_with_warmup(c.outer_steps, c.warmup_fraction)
        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)

    def loop_state(self) -> LoopState:
        """Optimizers, schedules, the batch stream and the direction of the bilevel loop."""
        c = self.config
        proxy_opt, proxy_sched = self._optimizer(self.proxy, c.lr_proxy)
        score_opt, score_sched = self._optimizer(self.score_model, c.lr_score)
        sampler = BatchSampler(
            len(self.context.pool), len(self.context.target_set), self.context.seed
        )
        direction = Direction(
            SolverSettings(
                name=c.solver, lamb=c.lamb, paper_loops=c.paper_loops, paper_lr=c.paper_lr,
                cg_iters=c.cg_iters, cg_tol=c.cg_tol, adam_beta1=c.adam_beta1,
                adam_beta2=c.adam_beta2, adam_eps=c.adam_eps,
            )
        )  # fmt: skip
        return LoopState(proxy_opt, proxy_sched, score_opt, score_sched, sampler, direction)

    def outer_step(self, state: LoopState) -> dict:
        """``inner_steps`` proxy steps, then one score-model step; returns the step's record."""
        for _ in range(self.config.inner_steps):
            lower_loss = self._lower_step(
                state.sampler.train(self.config.batch_size), state.proxy_opt
            )
        state.proxy_sched.step()
        if self._direction_is_due(state):
            state.direction.set_fixed(self.unrolled_direction(state.sampler))
        record = self._upper_step(state.sampler, state.direction, state.score_opt)
        state.score_sched.step()
        state.steps += 1
        record["lower_loss"] = lower_loss
        return record

    def _direction_is_due(self, state: LoopState) -> bool:
        """Whether the ``unrolled`` z must be (re)made before this outer step."""
        if state.direction.settings.name != "unrolled":
            return False
        refresh = self.config.unroll_refresh
        return state.direction.fixed is None or (refresh > 0 and state.steps % refresh == 0)

    def unrolled_direction(self, sampler: BatchSampler) -> list[torch.Tensor]:
        """``theta - theta_K``, where ``unroll_steps`` AdamW steps on the target set take a copy
        of the current proxy (data-parallel like the loop: each rank its share of a batch). The
        sign is that of ``grad f`` (a descent step moves against it), so ``c_i = g_i . z > 0``
        means that training on sequence i moves the proxy the way the target set's training
        does: ``g_i . z`` is the first-order form of ``L_i(theta) - L_i(theta_K)``."""
        c = self.config
        copy_ = copy.deepcopy(self.proxy)
        optimizer = torch.optim.AdamW(
            copy_.parameters(), lr=c.unroll_lr, betas=(c.beta1, c.beta2), weight_decay=0.0
        )
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, cosine_with_warmup(c.unroll_steps, 0.1)
        )
        for _ in range(c.unroll_steps):
            indices = sampler.target(c.target_batch_size)
            input_ids, labels = self.context.target_set.batch(self._local(indices))
            input_ids, labels = input_ids.to(self.context.device), labels.to(self.context.device)
            loss_sum, count = target_loss_sum(copy_, input_ids, labels)
            total = hg.all_reduce_sum([torch.tensor(float(count))])[0].item()
            optimizer.zero_grad(set_to_none=True)
            (loss_sum / max(total, 1.0)).backward()
            reduce_gradients(copy_)
            torch.nn.utils.clip_grad_norm_(copy_.parameters(), c.grad_clip)
            optimizer.step()
            schedule.step()
            width = self.context.target_set.width(indices)
            self.spend("training", copy_, len(input_ids) * width, "train", width)
        with torch.no_grad():
            z = [
                start.detach() - moved.detach()
                for moved, start in zip(copy_.parameters(), self.proxy.parameters())
            ]
        if c.direction_params == "blocks":
            z = restricted_to_blocks(self.proxy, z)
        logger.info("bliss: unrolled direction from %d target-set steps (|z| %.4g)",
                    c.unroll_steps, float(torch.sqrt(sum((v**2).sum() for v in z))))  # fmt: skip
        return z

    def _train(self) -> None:
        c = self.config
        state = self.loop_state()
        from tqdm.auto import tqdm

        start = time.perf_counter()
        progress = tqdm(
            range(c.outer_steps), desc="bliss", leave=False, disable=hg.rank() != 0 or None
        )
        for step in progress:
            record = {"step": step + 1, **self.outer_step(state)}
            self.history.append(record)
            if (step + 1) % c.log_interval == 0 or step + 1 == c.outer_steps:
                progress.set_postfix(
                    std=f"{record['score_std']:.4f}", f=f"{record['target_loss']:.3f}"
                )
                self._log_step(record)
        self.seconds["bilevel"] += time.perf_counter() - start
        self.direction = state.direction

    def _log_step(self, record: dict) -> None:
        residual = record["residual"]  # only cg measures one
        logger.info(
            "bliss step %d: target loss %.4f, lower loss %.4f, scores mean %.4f std %.4f "
            "[%.4f, %.4f]%s",
            record["step"], record["target_loss"], record["lower_loss"], record["score_mean"],
            record["score_std"], record["score_min"], record["score_max"],
            "" if np.isnan(residual) else f", solver residual {residual:.3g}",
        )  # fmt: skip

    def _local(self, indices: np.ndarray) -> np.ndarray:
        per_rank = len(indices) // hg.world_size()
        return indices[hg.rank() * per_rank : (hg.rank() + 1) * per_rank]

    def _l2_share(self) -> torch.Tensor:
        """This rank's share of the lower level's ``reg * ||theta_p||^2``."""
        squares = sum((p**2).sum() for p in self.proxy.parameters())
        return self.config.reg * squares / hg.world_size()

    def _lower_terms(self, tokens: torch.Tensor, global_batch: int):
        """Per-sample CE and this rank's share of the KL + L2 terms, in plain autograd (the
        graph of the Hessian-vector products; one backward takes ``weighted_lower_loss``)."""
        logits = lm_logits(self.proxy, tokens)
        ce = sequence_ce(logits, tokens)
        extra = self._l2_share()
        if self.config.gamma > 0:
            with torch.no_grad():
                target_logits = lm_logits(self.context.target_model, tokens)
            kl = sequence_kl(logits, target_logits)
            extra = extra + self.config.gamma * kl.sum() / global_batch
        return ce, extra

    def _spend_scorer(self, kind: str, tokens: float, pass_kind: str) -> None:
        """A score-model pass; a likelihood ratio adds its frozen copy's forward."""
        model = self.score_model
        self.spend(kind, model, tokens, pass_kind, lm_head=model.uses_lm_head)
        if model.reference_forwards:
            self.spend(kind, model, model.reference_forwards * tokens, "forward", lm_head=True)

    def _weight_scores(self, tokens: torch.Tensor) -> torch.Tensor:
        """The scores whose softmax over the global batch weights the lower level: the score
        model's logits (``gibbs``) or its sigmoid outputs (``paper``)."""
        if self.config.weights == "gibbs":
            return self.score_model.logits(tokens[:, :-1])
        return self.score_model(tokens[:, :-1])

    def _global_weights(self, tokens: torch.Tensor) -> torch.Tensor:
        """This rank's slice of softmax(scores) over the global batch (no gradient)."""
        with torch.no_grad(), evaluation(self.score_model):
            local = self._weight_scores(tokens)
        pool_tokens = len(tokens) * self.context.pool.seq_length  # weights: part of the step
        self._spend_scorer("training", pool_tokens, "forward")
        weights = torch.softmax(hg.all_gather_cat(local), 0)
        per_rank = len(local)
        return weights[hg.rank() * per_rank : (hg.rank() + 1) * per_rank]

    def _lower_step(self, indices: np.ndarray, optimizer) -> float:
        tokens = pool_batch(self.context.pool, self._local(indices), self.context.device)
        weights = self._global_weights(tokens)
        teacher = self.context.target_model if self.config.gamma > 0 else None
        kl_weight = self.config.gamma / len(indices)  # KL_i is a per-token mean; global batch
        loss = weighted_lower_loss(self.proxy, tokens, weights, teacher, kl_weight)
        loss = loss + self._l2_share()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        reduce_gradients(self.proxy)
        torch.nn.utils.clip_grad_norm_(self.proxy.parameters(), self.config.grad_clip)
        optimizer.step()
        self._spend_lower(len(tokens))
        return float(hg.all_reduce_sum([loss.detach().reshape(1)])[0])  # ranks hold shares

    def _spend_lower(self, sequences: int, pass_kind: str = "train") -> None:
        """The lower loss: the proxy's pass plus the frozen target's forward for the KL."""
        tokens = sequences * self.context.pool.seq_length
        self.spend("training", self.proxy, tokens, pass_kind)
        if self.config.gamma > 0:
            self.spend("training", self.context.target_model, tokens, "forward")

    def _target_gradient(self, indices: np.ndarray) -> tuple[list[torch.Tensor], float]:
        input_ids, labels = self.context.target_set.batch(self._local(indices))
        input_ids, labels = input_ids.to(self.context.device), labels.to(self.context.device)
        params = list(self.proxy.parameters())
        loss_sum, count = target_loss_sum(self.proxy, input_ids, labels)
        total = hg.all_reduce_sum([torch.tensor(float(count))])[0].item()
        grads = torch.autograd.grad(loss_sum / max(total, 1.0), params, allow_unused=True)
        grads = [g if g is not None else torch.zeros_like(p) for g, p in zip(grads, params)]
        if self.config.direction_params == "blocks":
            grads = restricted_to_blocks(self.proxy, grads)
        loss = hg.all_reduce_sum([loss_sum.detach().reshape(1)])[0].item() / max(total, 1.0)
        width = self.context.target_set.width(indices)  # the global batch's: as 1 rank counts
        self.spend("training", self.proxy, len(input_ids) * width, "train", width)
        return hg.all_reduce_sum(grads), loss

    def _target_loss(self, indices: np.ndarray) -> float:
        """The proxy's mean loss on a global target-set batch, without a gradient."""
        input_ids, labels = self.context.target_set.batch(self._local(indices))
        input_ids, labels = input_ids.to(self.context.device), labels.to(self.context.device)
        with torch.no_grad():
            loss_sum, count = target_loss_sum(self.proxy, input_ids, labels)
        total, summed = hg.all_reduce_sum([torch.tensor([float(count), float(loss_sum)])])[0]
        width = self.context.target_set.width(indices)
        self.spend("training", self.proxy, len(input_ids) * width, "forward", width)
        return summed.item() / max(total.item(), 1.0)

    def _upper_step(self, sampler, direction: Direction, optimizer) -> dict:
        c = self.config
        target_batch = sampler.target(c.target_batch_size)
        if direction.needs_target_gradient:
            grad_f, target_loss = self._target_gradient(target_batch)
        else:  # the loss is only logged: a forward
            grad_f, target_loss = None, self._target_loss(target_batch)
        indices = sampler.train(c.draws_per_step)
        tokens = pool_batch(self.context.pool, self._local(indices), self.context.device)
        local_scores = self._weight_scores(tokens)
        global_scores = hg.gather_with_local_grad(local_scores)
        dots, info, hvps = self._sample_dots(tokens, global_scores, direction, grad_f)
        global_dots = hg.all_gather_cat(dots)
        signal = normalize_dots(global_dots, c.normalize)
        optimizer.zero_grad(set_to_none=True)
        hg.surrogate_loss(global_scores, signal, c.entropy_weight).backward()
        reduce_gradients(self.score_model)
        torch.nn.utils.clip_grad_norm_(self.score_model.parameters(), c.grad_clip)
        optimizer.step()
        self._spend_scorer("training", len(tokens) * self.context.pool.seq_length, "train")
        scores = global_scores.detach()
        weights = torch.softmax(scores, 0)
        return {
            "target_loss": target_loss,
            "score_mean": float(scores.mean()),
            "score_std": float(scores.std()),
            "score_min": float(scores.min()),
            "score_max": float(scores.max()),
            "hvps": hvps,
            "residual": info.residual,
            "dots_mean": float(global_dots.mean()),
            "dots_std": float(global_dots.std()),
            "weighted_signal": float((weights * signal).sum()),
        }

    def alignment(self, tokens: torch.Tensor, z: list[torch.Tensor]) -> torch.Tensor:
        """``c_i`` of every row (``alignment``) without the lower graph: per-sample gradients
        (cosine), finite differences or forward mode."""
        if self.config.alignment == "consistency":
            return token_consistent_dots(self._directional_derivatives(tokens, z, per_token=True))
        if self.config.alignment == "cosine":  # the per-sample gradients give both terms
            with sdpa_math():
                norms, dots = per_sample_gradient_terms(
                    self.proxy, tokens, z, self.config.per_sample_chunk
                )
            return divided_by_norms(dots, norms)
        return self._directional_derivatives(tokens, z, per_token=False)

    def _alignment_and_gradient_norms(self, tokens, z) -> tuple[torch.Tensor, torch.Tensor]:
        """``(c_i, ||g_i||)``: the cosine's one per-sample pass gives both (the diagnostics)."""
        cosine = self.config.alignment == "cosine"
        with sdpa_math():
            norms, dots = per_sample_gradient_terms(
                self.proxy, tokens, z if cosine else None, self.config.per_sample_chunk
            )
        return (divided_by_norms(dots, norms) if cosine else self.alignment(tokens, z)), norms

    def _per_sample_scaled(self, dots: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Dots from elsewhere (the lower graph) in the form ``alignment`` asks for."""
        if self.config.alignment != "cosine":
            return dots
        with sdpa_math():
            norms, _ = per_sample_gradient_terms(
                self.proxy, tokens, chunk=self.config.per_sample_chunk
            )
        return divided_by_norms(dots, norms)

    def _directional_derivatives(self, tokens, z, per_token: bool) -> torch.Tensor:
        """The derivative along z of each row's loss (``[B]``) or of each position's (``[B, L]``)."""
        if self.config.dots == "jvp":
            logits_loss = token_ce if per_token else sequence_ce
            with sdpa_math():
                return hg.jvp_sample_dots(
                    self.proxy, {"input_ids": tokens[:, :-1]},
                    lambda out: logits_loss(out.logits, tokens), z,
                )  # fmt: skip
        model_loss = token_losses if per_token else sequence_losses
        return hg.fd_sample_dots(self.proxy, lambda model: model_loss(model, tokens), z)

    def _sample_dots(self, tokens, global_scores, direction: Direction, grad_f):
        """``(c_i of this rank's rows, solver info, HVPs used)`` for z from ``direction``."""
        use_graph = self.config.dots == "graph" or direction.needs_hvp
        if not use_graph:
            z, info = direction(None, grad_f)
            dots = self.alignment(tokens, z)
            self._spend_alignment("training", len(tokens))
            return dots, info, 0
        per_rank = len(tokens)
        weights = torch.softmax(global_scores.detach(), 0)
        local_weights = weights[hg.rank() * per_rank : (hg.rank() + 1) * per_rank]
        with sdpa_math():
            ce, extra = self._lower_terms(tokens, len(global_scores))
            graph = hg.LowerGraph(list(self.proxy.parameters()), ce, local_weights, extra)
            z, info = direction(graph.hvp, grad_f)
            dots = graph.sample_dots(z)
        dots = self._per_sample_scaled(dots, tokens)
        if self.config.alignment == "cosine":
            self.spend("training", self.proxy, per_rank * self.context.pool.seq_length, "train")
        self._spend_lower(per_rank, "graph")
        for _ in range(graph.num_hvps + 1):  # each HVP and the dot extraction
            self.spend(
                "training", self.proxy, per_rank * self.context.pool.seq_length, "vjp_of_graph"
            )
        return dots, info, graph.num_hvps

    # ---------------------------------------------------------------------------- diagnostics
    def _diagnose(self, scores: np.ndarray) -> dict[str, float]:
        """How well the score model learned what it was trained on, on random pool sequences:
        Spearman correlation with the direct alignment ``g_i . z`` at the final proxy (its
        target), with the proxy's loss and with the per-sample gradient norm (what a score model
        that learned "unusual text" would track)."""
        c = self.config
        rng = np.random.default_rng([self.context.seed, 29])
        count = min(c.diagnostic_sequences, len(self.context.pool))
        indices = np.sort(rng.choice(len(self.context.pool), size=count, replace=False))
        z = self._final_direction(rng)
        alignment, losses, norms = [], [], []
        for chunk in np.array_split(indices, max(1, count // 16)):
            tokens = pool_batch(self.context.pool, chunk, self.context.device)
            direct, norm = self._alignment_and_gradient_norms(tokens, z)
            with sdpa_math(), torch.no_grad():
                loss = sequence_ce(lm_logits(self.proxy, tokens), tokens)
            alignment.append(direct.cpu().numpy())
            losses.append(loss.cpu().numpy())
            norms.append(norm.cpu().numpy())
        alignment, losses, norms = map(np.concatenate, (alignment, losses, norms))
        picked = scores[indices]
        result = {
            "sequences": int(count),
            "spearman_alignment": spearman(picked, alignment),
            "spearman_loss": spearman(picked, losses),
            "spearman_gradient_norm": spearman(picked, norms),
            "alignment_vs_gradient_norm": spearman(alignment, norms),
        }
        logger.info(
            "bliss diagnostics (%d sequences): score vs direct alignment %.3f, vs loss %.3f, "
            "vs gradient norm %.3f (alignment vs gradient norm %.3f)",
            count, result["spearman_alignment"], result["spearman_loss"],
            result["spearman_gradient_norm"], result["alignment_vs_gradient_norm"],
        )  # fmt: skip
        return result

    def _final_direction(self, rng: np.random.Generator) -> list[torch.Tensor]:
        """The z the score model learned from: the adam moments or the unrolled displacement,
        else a fresh solve."""
        if self.direction is not None and self.direction.moments is not None:
            return self.direction.moments.current()
        if self.direction is not None and self.direction.fixed is not None:
            return self.direction.fixed
        batch = rng.choice(len(self.context.target_set), size=self.config.target_batch_size)
        grad_f, _ = self._target_gradient(np.asarray(batch))
        if not self.direction.needs_hvp:
            return self.direction(None, grad_f)[0]
        tokens = pool_batch(
            self.context.pool, rng.choice(len(self.context.pool), 8), self.context.device
        )
        with sdpa_math():
            ce, extra = self._lower_terms(tokens, len(tokens))
            weights = torch.full(
                (len(tokens),), 1.0 / len(tokens), dtype=ce.dtype, device=ce.device
            )
            graph = hg.LowerGraph(list(self.proxy.parameters()), ce, weights, extra)
            return self.direction(graph.hvp, grad_f)[0]

    # ------------------------------------------------------------------------ scoring, saving
    def score(self) -> np.ndarray:
        if self.score_model is None:
            raise ValueError("bliss: call fit() before score()")
        if self.config.ranking == "alignment":
            return self._alignment_scores()
        start = time.perf_counter()
        scores = score_pool(
            self.score_model,
            self.context.pool,
            self.config.score_batch_size,
            self.context.device,
            self.config.score_precision,
        )
        self.seconds["scoring"] += time.perf_counter() - start
        self._spend_scorer("scoring", len(scores) * self.context.pool.seq_length, "forward")
        if self.holdout is not None and hg.rank() == 0:  # rank 0 decides for every rank
            self.shift = self._test_target_shift()
        if self.config.diagnostic_sequences > 0 and self.proxy is not None:  # ranks that fit
            spent = dict(self.flops)  # instrumentation, not the method's cost
            self.diagnostics = self._diagnose(scores)
            self.flops = spent
        return scores

    def _test_target_shift(self) -> ShiftTest:
        """Score the held-out target examples and as many pool documents, cut the same way,
        and test whether the target examples rank above the pool's."""
        pool, length = self.context.pool, self.context.pool.seq_length
        eod = getattr(self.context.tokenizer, "eos_token_id", None)
        targets = [example.input_ids[-length:] for example in self.holdout.examples]
        tails = pool_document_tails(pool, SHIFT_POOL_DOCUMENTS, length, eod, self.context.seed)
        held, pool_tails = (
            score_rows(self.score_model, rows, self.context.device, self.config.score_precision)
            for rows in (targets, tails)
        )
        self._spend_scorer("scoring", sum(len(row) for row in targets + tails), "forward")
        shift = shift_test(held, pool_tails, self.config.shift_alpha)
        logger.info(
            "bliss: %d held-out target examples vs the pool: AUC %.3f (p = %.2g) -> %s",
            shift.target_examples, shift.auc, shift.p_value,
            "top-k" if shift.sharp else "a uniform sample",
        )  # fmt: skip
        return shift

    def selection_temperature(self, configured: float, scores: np.ndarray) -> float:
        rule = self.config.selection_rule
        if configured > 0 or rule == "top_k":
            return configured
        if rule == "sample":
            return SAMPLING_TEMPERATURE
        if self.shift is not None and not self.shift.sharp:
            return uniform_temperature(scores)
        return configured

    def _alignment_scores(self) -> np.ndarray:
        """``g_i . z`` of every pool sequence, computed by this rank whole (no collective)."""
        if self.proxy is None:
            raise ConfigError("bliss.ranking 'alignment' needs the proxy on every scoring rank")
        from tqdm.auto import tqdm

        start = time.perf_counter()
        z = self._final_direction(np.random.default_rng([self.context.seed, 29]))
        pool, size = self.context.pool, self.config.score_batch_size
        scores = []
        for first in tqdm(
            range(0, len(pool), size),
            desc="bliss: alignment",
            leave=False,
            disable=hg.rank() != 0 or None,
        ):
            chunk = np.arange(first, min(first + size, len(pool)))
            tokens = pool_batch(pool, chunk, self.context.device)
            scores.append(self.alignment(tokens, z).float().cpu().numpy())
        self.seconds["scoring"] += time.perf_counter() - start
        self._spend_alignment("scoring", len(pool))
        return np.concatenate(scores)

    def _spend_alignment(self, kind: str, sequences: int) -> None:
        tokens = sequences * self.context.pool.seq_length
        cosine = self.config.alignment == "cosine"  # a forward-backward per sequence
        self.spend(kind, self.proxy, tokens, "train" if cosine else PASS_OF_DOTS[self.config.dots])

    def summary(self) -> dict:
        summary = {"selection_rule": self.config.selection_rule}
        if self.shift is not None:
            summary["target_shift"] = self.shift.as_dict()
        if self.diagnostics:
            summary["diagnostics"] = self.diagnostics
        return summary

    def save(self, run_dir: Path) -> None:
        if self.score_model is None or hg.rank() != 0:
            return
        run_dir = Path(run_dir)
        meta = {
            "method": self.name,
            "seq_length": self.context.pool.seq_length,
            "vocab_size": int(self.score_model.config.vocab_size),
            "model_type": self.score_model.config.model_type,
            "outer_steps": self.config.outer_steps,
            "variant": self.config.variant,
            "solver": self.config.solver,
            "normalize": self.config.normalize,
            "weights": self.config.weights,
            "temperature": self.config.temperature,
        }
        self.score_model.save(run_dir / "score_model", meta, tokenizer=self.context.tokenizer)
        lines = "".join(json.dumps(record) + "\n" for record in self.history)
        from megatron_bliss.utils.io import atomic_write_json, atomic_write_text

        atomic_write_text(run_dir / "bliss_metrics.jsonl", lines)
        if self.diagnostics:
            atomic_write_json(run_dir / "bliss_diagnostics.json", self.diagnostics)


def block_parameter_ids(model: torch.nn.Module) -> set[int]:
    """``id`` of every parameter inside the transformer blocks."""
    from megatron_bliss.models.compile import transformer_blocks

    return {id(p) for block in transformer_blocks(model) for p in block.parameters()}


def restricted_to_blocks(model: torch.nn.Module, grads: list[torch.Tensor]) -> list[torch.Tensor]:
    """``grads`` (one per ``model.parameters()``) with zeros outside the transformer blocks."""
    inside = block_parameter_ids(model)
    return [
        g if id(p) in inside else torch.zeros_like(g) for g, p in zip(grads, model.parameters())
    ]


def freeze_outside_blocks(model: torch.nn.Module) -> None:
    inside = block_parameter_ids(model)
    for parameter in model.parameters():
        parameter.requires_grad_(id(parameter) in inside)


def per_sample_gradient_terms(
    model: torch.nn.Module,
    tokens: torch.Tensor,
    z: list[torch.Tensor] | None = None,
    chunk: int = 16,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(||g_i||, g_i . z)`` of every row, ``g_i`` the gradient of its mean loss, from
    ``torch.func`` per-sample gradients ``chunk`` rows at a time (each row's gradient is as large
    as the model, so memory is ``chunk`` x the parameters); ``g_i . z`` only when ``z`` (one
    tensor per ``model.parameters()``) is given."""
    from torch.func import functional_call, grad, vmap

    named = dict(model.named_parameters())
    params = {name: p.detach() for name, p in named.items()}
    along = dict(zip(named, z)) if z is not None else None

    def loss_of(parameters, row):
        logits = functional_call(model, parameters, (), {"input_ids": row[None, :-1]}).logits
        return sequence_ce(logits, row[None])[0]

    norms, dots = [], []
    for rows in tokens.split(chunk):
        grads = vmap(grad(loss_of), in_dims=(None, 0))(params, rows)
        flat = {name: g.reshape(len(rows), -1) for name, g in grads.items()}
        norms.append(sum(g.pow(2).sum(1) for g in flat.values()).sqrt())
        if along is not None:
            dots.append(sum(g @ along[name].reshape(-1).to(g.dtype) for name, g in flat.items()))
    return torch.cat(norms), (torch.cat(dots) if along is not None else None)


def divided_by_norms(dots: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
    return dots / norms.to(dots.dtype).clamp_min(torch.finfo(dots.dtype).tiny)


@dataclass
class LoopState:
    proxy_opt: torch.optim.Optimizer
    proxy_sched: torch.optim.lr_scheduler.LRScheduler
    score_opt: torch.optim.Optimizer
    score_sched: torch.optim.lr_scheduler.LRScheduler
    sampler: BatchSampler
    direction: Direction
    steps: int = 0
    """Outer steps taken."""


class BatchSampler:
    """Global batches drawn from one seeded stream, identical on every rank."""

    def __init__(self, pool_size: int, target_size: int, seed: int):
        self.pool_size, self.target_size = pool_size, target_size
        self.rng = np.random.default_rng([seed, 17])

    def _draw(self, population: int, size: int) -> np.ndarray:
        return self.rng.choice(population, size=size, replace=size > population)

    def train(self, size: int) -> np.ndarray:
        return self._draw(self.pool_size, size)

    def target(self, size: int) -> np.ndarray:
        return self._draw(self.target_size, size)


def reduce_gradients(model: torch.nn.Module) -> None:
    """Sum gradients over ranks (each rank's loss is its share of the global loss)."""
    params = [p for p in model.parameters() if p.grad is not None]
    for param, reduced in zip(params, hg.all_reduce_sum([p.grad for p in params])):
        param.grad = reduced


def broadcast_parameters(model: torch.nn.Module) -> None:
    """Rank 0's parameters and buffers on every rank of the group."""
    if hg.world_size() == 1:
        return
    import torch.distributed as dist

    for tensor in list(model.parameters()) + list(model.buffers()):
        dist.broadcast(tensor.data, src=0, group=hg.group_handle())
