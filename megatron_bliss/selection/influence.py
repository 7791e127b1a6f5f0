"""Influence Distillation, first order (Nikdan et al. 2025; as the authors' released code).

The influence of a pool sequence s on target example t is the alignment of their loss gradients,
``p[s, t] = <a * g_s, g_t>`` (unit-normalised, ``a`` = Adam preconditioner when the optimizer
state is known). Exact gradients are too costly for every s, so they are computed for L random
**landmarks** only and propagated to all sequences by kernel ridge regression on cheap JVP
embeddings (``influence_kernels``):

    p_hat[:, t] = K_SL (K_LL + delta * mean(diag K_LL) I)^{-1} p_L[:, t],
    K = RBF kernel with sigma = median pairwise landmark distance.

``K_LL`` is factorised once (Cholesky) for all target examples. ``score()`` returns the mean
influence over target examples (for the shared top-k rule). The released code instead selects by
**round robin** over target examples (each takes its best not-yet-chosen sequence in turn): that
yields a selection, not scores, so it is exposed as ``select_round_robin`` and ``score`` keeps
the mean.

The warm model is the target model itself (the pipeline's warm-up/previous round plays the role
of the paper's warm-up). With ``adam_state`` (the ``adam_state.pt`` the engine writes into every
checkpoint when ``checkpoint.adam_state_params`` names the gradient layers, or that checkpoint
itself) landmark gradients are multiplied by the AdamW preconditioner ``a`` of method-spec 2.2,
as the released code does with its optimizer; without it they are plain gradients.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from megatron_bliss.engine.checkpoint import resolve_checkpoint
from megatron_bliss.engine.optimizer_state import ADAM_STATE_FILE
from megatron_bliss.errors import ConfigError, InputError, MissingFileError
from megatron_bliss.selection.base import EarlierRounds, Selector
from megatron_bliss.selection.influence_kernels import (
    BlockProjector,
    GradientSketcher,
    adam_preconditioner,
    jvp_embeddings,
    shifted_batch,
)
from megatron_bliss.selection.perplexity import require_target_model

logger = logging.getLogger(__name__)

ADAM_STATE_AUTO = "auto"  # in a pipeline: the previous round's checkpoint (see carry_over)


# -- Adam state ----------------------------------------------------------------------------------
def resolve_adam_state(location: str) -> Path:
    """The ``adam_state.pt`` that ``location`` names: the file itself, or the one in a checkpoint
    (a run dir or its ``checkpoints/``, read through ``latest``, or a step folder)."""
    if location == ADAM_STATE_AUTO:
        raise ConfigError(
            "influence.adam_state=auto is filled in by the pipeline (the previous round's "
            "checkpoint); for select, give adam_state.pt or a checkpoint directory"
        )
    path = Path(location)
    if path.is_file():
        return path
    if not path.exists():
        raise MissingFileError(f"{path}: adam_state file not found")
    checkpoint_dir, tag = resolve_checkpoint(path)
    found = checkpoint_dir / tag / ADAM_STATE_FILE
    if not found.exists():
        raise MissingFileError(
            f"{found}: not found (train with checkpoint.adam_state_params=[down_proj] to write it)"
        )
    return found


def check_adam_state_covers(preconditioner: dict, modules, source: Path) -> None:
    """Every weight and bias of the gradient layers needs its own second moment."""
    for name, module in modules:
        for kind in ("weight", "bias"):
            parameter = getattr(module, kind, None)
            if parameter is None:
                continue
            key = f"{name}.{kind}"
            if key not in preconditioner:
                raise InputError(f"{source}: adam_state has no exp_avg_sq for {key}")
            if preconditioner[key].shape != parameter.shape:
                raise InputError(
                    f"{source}: exp_avg_sq of {key} has shape {tuple(preconditioner[key].shape)}, "
                    f"the model's is {tuple(parameter.shape)}"
                )


# -- kernel ridge regression -------------------------------------------------------------------
def squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return ((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T).clamp(min=0)


def rbf_kernel(a: torch.Tensor, b: torch.Tensor, sigma: float) -> torch.Tensor:
    return torch.exp(-squared_distances(a, b) / (2 * sigma**2))


def median_distance(points: torch.Tensor, max_points: int, seed: int) -> float:
    """Median pairwise distance among (at most ``max_points`` sampled) points; 1.0 if degenerate."""
    if len(points) > max_points:
        chosen = np.random.default_rng(seed).choice(len(points), max_points, replace=False)
        points = points[torch.from_numpy(chosen)]
    distances = squared_distances(points, points).sqrt()
    upper = distances[torch.triu_indices(len(points), len(points), 1).unbind()]
    median = float(upper.median()) if len(upper) else 0.0
    return median if median > 0 else 1.0


class KernelRidge:
    """RBF kernel ridge regression from landmark embeddings, ``K_LL`` factorised once."""

    def __init__(self, landmarks: torch.Tensor, damping: float, sigma: float):
        self.landmarks = landmarks.double()
        self.sigma = sigma
        kernel = rbf_kernel(self.landmarks, self.landmarks, sigma)
        ridge = damping * kernel.diagonal().mean()
        self.factor = torch.linalg.cholesky(
            kernel + ridge * torch.eye(len(kernel), dtype=kernel.dtype)
        )

    def coefficients(self, values: torch.Tensor) -> torch.Tensor:
        """``(K_LL + ridge I)^{-1} values`` for ``values`` of shape ``[L, T]``."""
        return torch.cholesky_solve(values.double(), self.factor)

    def propagate(self, embeddings: torch.Tensor, coefficients: torch.Tensor, chunk: int):
        """``K_SL @ coefficients`` for all rows of ``embeddings``, in chunks."""
        out = []
        for start in range(0, len(embeddings), chunk):
            part = embeddings[start : start + chunk].double()
            out.append(rbf_kernel(part, self.landmarks, self.sigma) @ coefficients)
        return torch.cat(out) if out else torch.zeros(0, coefficients.shape[1], dtype=torch.float64)


# -- round robin -------------------------------------------------------------------------------
def select_round_robin(influence: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """The released code's selection: target examples take turns (random order each round),
    each taking its highest-influence sequence not chosen yet, until ``k`` are chosen.

    ``influence`` is ``[N, T]``; returns sorted int64 indices.
    """
    num_samples, num_targets = influence.shape
    k = min(int(k), num_samples)
    rng = np.random.default_rng(seed)
    ranked = np.argsort(-influence, axis=0, kind="stable")  # [N, T]: best sequences per target
    cursor = np.zeros(num_targets, dtype=np.int64)
    chosen = np.zeros(num_samples, dtype=bool)
    picked: list[int] = []
    while len(picked) < k:
        for target in rng.permutation(num_targets):
            while chosen[ranked[cursor[target], target]]:
                cursor[target] += 1
            best = ranked[cursor[target], target]
            chosen[best] = True
            picked.append(int(best))
            if len(picked) == k:
                break
    return np.sort(np.asarray(picked, dtype=np.int64))


# -- the selector --------------------------------------------------------------------------------
class InfluenceSelector(Selector):
    """First-order Influence Distillation with landmark KRR (defaults: the released code's)."""

    name = "influence"

    @dataclass
    class Config:
        num_blocks: int = 4
        """Transformer blocks kept for the JVP embeddings."""
        num_tangents: int = 2
        """Random tangent directions m (embedding = m * hidden_size values before projection)."""
        jvp_proj_dim: int = 4096
        """Rademacher projection of the JVP embedding (applied only if it is longer)."""
        jvp_batch_size: int = 16
        num_landmarks: int = 4096
        """Landmarks L (uniformly random pool sequences) with exact gradients."""
        param_subset: str = "down_proj"
        """Gradient parameters: ``down_proj`` = MLP down-projections; else a module-name suffix."""
        proj_type: str = "hadamard"
        """Gradient projection: ``hadamard`` (randomized, blockwise), ``rademacher`` or ``none``."""
        proj_dim: int = 32768
        grad_batch_size: int = 4
        target_examples: int = 0
        """Target examples used (0 = all)."""
        damping: float = 1e-2
        """Ridge delta, relative to the mean kernel diagonal."""
        sigma_points: int = 1000
        """Landmarks sampled for the median-distance bandwidth."""
        kernel_chunk: int = 8192
        adam_state: str = ""
        """AdamW preconditioner: ``adam_state.pt`` ({step, beta1, beta2, eps, exp_avg_sq: {param:
        tensor}}) or a checkpoint holding one; ``auto`` in a pipeline: the previous round's
        checkpoint. Empty: plain gradients."""

    @classmethod
    def carry_over(cls, config, earlier: EarlierRounds) -> dict:
        """``adam_state: auto``: the AdamW state saved with the model this round selects for."""
        return {"adam_state": earlier.checkpoints} if config.adam_state == ADAM_STATE_AUTO else {}

    @classmethod
    def exported_adam_layers(cls, config) -> list[str]:
        """``adam_state: auto`` needs every training stage to save ``param_subset``'s moments."""
        return [config.param_subset] if config.adam_state == ADAM_STATE_AUTO else []

    def __init__(self, config, context):
        super().__init__(config, context)
        self.embeddings: torch.Tensor | None = None
        self.landmarks: np.ndarray | None = None
        self.krr: KernelRidge | None = None
        self.landmark_influence: torch.Tensor | None = None  # p_L, [L, T]
        self.adam_state_path: Path | None = None

    def preconditioner(self) -> dict[str, torch.Tensor]:
        if not self.config.adam_state:
            return {}
        path = resolve_adam_state(self.config.adam_state)
        self.adam_state_path = path
        state = torch.load(path, map_location="cpu", weights_only=True)
        missing = {"step", "beta1", "beta2", "eps", "exp_avg_sq"} - set(state)
        if missing:
            raise InputError(f"{path}: adam_state lacks {', '.join(sorted(missing))}")
        return {
            name: adam_preconditioner(
                v, int(state["step"]), state["beta1"], state["beta2"], state["eps"]
            )
            for name, v in state["exp_avg_sq"].items()
        }

    def _target_batches(self):
        target_set = self.context.target_set
        count = self.config.target_examples or len(target_set)
        rng = np.random.default_rng(self.context.seed + 2)
        indices = np.sort(rng.choice(len(target_set), min(count, len(target_set)), replace=False))
        for start in range(0, len(indices), self.config.grad_batch_size):
            yield shifted_batch(
                *target_set.batch(indices[start : start + self.config.grad_batch_size])
            )

    def _pool_batches(self, indices: np.ndarray):
        pool = self.context.pool
        for start in range(0, len(indices), self.config.grad_batch_size):
            tokens = torch.from_numpy(
                pool.batch(indices[start : start + self.config.grad_batch_size])
            )
            yield tokens[:, :-1], tokens[:, 1:]

    def _sketch_all(self, sketcher, batches, precondition: bool, desc: str) -> torch.Tensor:
        device, rows = self.context.device, []
        batches = list(batches)
        for inputs, targets in tqdm(batches, desc=desc, leave=False, disable=len(batches) < 20):
            rows.append(sketcher.sketch(inputs.to(device), targets.to(device), precondition).cpu())
            self.spend("training", sketcher.model, inputs.numel(), "train", inputs.shape[1])
        return torch.cat(rows).double()

    def fit(self) -> None:
        c, context = self.config, self.context
        model = require_target_model(context, self.name)
        if context.target_set is None:
            raise ConfigError("influence: needs a target set (--target-data)")
        pool = context.pool
        if len(pool) == 0:
            raise InputError(f"influence: pool {pool.prefix} has no sequences")
        was_training = model.training
        model.eval()
        embeddings = jvp_embeddings(
            model,
            pool,
            num_blocks=c.num_blocks,
            num_tangents=c.num_tangents,
            proj_dim=c.jvp_proj_dim,
            batch_size=c.jvp_batch_size,
            seed=context.seed,
            device=context.device,
        )
        self.embeddings = torch.from_numpy(embeddings)
        kept = min(c.num_blocks, model.config.num_hidden_layers) / model.config.num_hidden_layers
        tangent_tokens = c.num_tangents * kept * len(pool) * pool.seq_length  # truncated model
        self.spend("scoring", model, tangent_tokens, "jvp", lm_head=False)
        rng = np.random.default_rng(context.seed)
        self.landmarks = np.sort(
            rng.choice(len(pool), min(c.num_landmarks, len(pool)), replace=False)
        )
        projector = BlockProjector(c.proj_type, c.proj_dim, context.seed)
        sketcher = GradientSketcher(model, c.param_subset, projector, self.preconditioner())
        if sketcher.preconditioner:
            check_adam_state_covers(sketcher.preconditioner, sketcher.modules, self.adam_state_path)
        landmark_grads = self._sketch_all(
            sketcher, self._pool_batches(self.landmarks), True, "landmark grads"
        )
        target_grads = self._sketch_all(sketcher, self._target_batches(), False, "target grads")
        model.train(was_training)
        self.landmark_influence = landmark_grads @ target_grads.T
        landmark_embeddings = self.embeddings[torch.from_numpy(self.landmarks)]
        sigma = median_distance(landmark_embeddings.double(), c.sigma_points, context.seed)
        self.krr = KernelRidge(landmark_embeddings, c.damping, sigma)
        logger.info(
            "influence: %d landmarks, %d target examples, gradient dim %d -> %d, sigma %.4g",
            len(self.landmarks),
            target_grads.shape[0],
            sketcher.dimension,
            landmark_grads.shape[1],
            sigma,
        )

    def influence_matrix(self) -> np.ndarray:
        """``[N, T]`` propagated influence of every pool sequence on every target example."""
        if self.krr is None:
            self.fit()
        coefficients = self.krr.coefficients(self.landmark_influence)
        return self.krr.propagate(self.embeddings, coefficients, self.config.kernel_chunk).numpy()

    def score(self) -> np.ndarray:
        """Mean propagated influence over target examples, float32."""
        if self.krr is None:
            self.fit()
        mean_influence = self.landmark_influence.mean(dim=1, keepdim=True)
        coefficients = self.krr.coefficients(mean_influence)  # KRR is linear in its targets
        scores = self.krr.propagate(self.embeddings, coefficients, self.config.kernel_chunk)
        return scores[:, 0].numpy().astype(np.float32)

    def select_round_robin(self, fraction: float) -> np.ndarray:
        """The released code's round-robin selection of ``floor(fraction * N)`` sequences."""
        k = math.floor(fraction * len(self.context.pool))
        return select_round_robin(self.influence_matrix(), k, self.context.seed)
