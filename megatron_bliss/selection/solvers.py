"""The direction ``z`` of BLISS's hypergradient: approximate solvers of ``(H + lamb I) z = grad f``.

``H`` is only available through Hessian-vector products (``hvp(v)``), each costing roughly two
backward passes of the proxy. Four directions:

* ``paper``: the authors' recipe, reproduced for comparison: ``z0 = 1/numel`` per tensor, then
  ``paper_loops`` (3) steps ``z <- z - lr * clip(H z + lamb z - grad f)`` with step 1e-2 and each
  tensor's update rescaled to norm <= 1. Three small steps barely move ``z``: it stays close to
  its start plus a multiple of ``grad f``, i.e. nearly ``identity`` at 3 HVPs per outer step.
* ``identity``: ``z = grad f`` (``H ~ I``: gradient alignment between each training sequence and
  the target set). No HVPs.
* ``cg``: conjugate gradient on the damped system from ``z = 0``, ``cg_iters`` steps or until the
  relative residual is below ``cg_tol``; it stops on non-positive curvature (an LM's Hessian is
  indefinite) keeping the last iterate. The relative residual is logged every outer step.
* ``unrolled``: ``z = theta - theta_K``, minus the displacement of a copy of the proxy after K
  AdamW steps on the target set (``unroll_steps``, ``unroll_lr``; the sign of ``grad f``, which a
  descent step moves against), so ``c_i = g_i . z`` is the first-order drop of sequence i's loss
  along the whole fine-tuning path, not only its first step: the curvature the path meets is in
  z. Reducible loss is the same drop taken at finite size; ``unrolled`` keeps BLISS's linear
  ``c_i`` and its score model. No HVPs; K extra target-set steps whenever z is refreshed.
* ``adam``: ``z = m_hat / (sqrt(v_hat) + eps)`` from Adam's moments of ``grad f`` kept across
  outer steps: the step an AdamW-trained model would take on the target set, so ``c_i = g_i . z``
  is the first-order drop of sequence i's loss when the target is trained on the target set (the
  first-order form of reducible loss). A diagonal preconditioner from the target set's own
  gradient statistics, not an approximation of the lower-level Hessian; no HVPs. Its moments
  also average ``grad f`` over many target batches, which a per-step solver cannot.

**How the solvers compare** (2-core CPU, this repository; the default is in
``BlissSelector.Config`` and README "Efficacy" gives the measurement that chose it):

* Fidelity on a small problem with an exact answer (tests/selection/test_hypergrad.py, softmax
  regression, cond(H + lamb I) ~ 440 and ~640): cosine with the exact implicit hypergradient
  paper 0.74 / -0.31, identity 0.75 / -0.33, cg 3 iterations -0.01 / 0.69, cg 10: 0.94 / 0.999,
  cg 30: 1.00 / 1.00. Only ``cg`` is faithful, and it needs ~10-30 HVPs.
* Planted pool (benchmarks/planted_pool_auc.py: real C4 + shuffled-word + boilerplate text, tiny
  GPT-NeoX proxy h128, 4k BPE, 25 outer steps from the same warm proxy, 2000 sequences): AUC
  (useful above useless) boilerplate 1.00 / shuffled 0.43 for every solver, but the bilevel loop
  took 31 s (identity), 88 s (paper) and 94 s (cg, 3 iterations): identity gives the same AUC at
  about a third of the CPU time, so it ranks best per CPU-second (200 identity steps at
  lr_score 3e-4: shuffled 0.90, boilerplate 1.00). ``cg`` stays available where
  hypergradient fidelity matters more than time (larger, better-conditioned proxies).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from megatron_bliss.selection.hypergrad import dot

logger = logging.getLogger(__name__)

SOLVERS = ("paper", "identity", "cg", "adam", "unrolled")
NEEDS_HVP = ("paper", "cg")
Tensors = list[torch.Tensor]
HvpFn = Callable[[Sequence[torch.Tensor]], Tensors]


@dataclass
class SolverSettings:
    name: str = "identity"
    lamb: float = 1e-2  # Tikhonov damping of the linear system
    paper_loops: int = 3
    paper_lr: float = 1e-2
    paper_clip: float = 1.0
    cg_iters: int = 10
    cg_tol: float = 1e-3
    adam_beta1: float = 0.9
    adam_beta2: float = 0.99
    adam_eps: float = 1e-8


@dataclass
class SolveInfo:
    iterations: int = 0
    residual: float = float("nan")  # relative residual ||(H + lamb I) z - b|| / ||b|| when known


def _norm(vectors: Sequence[torch.Tensor]) -> float:
    return float(torch.sqrt(dot(vectors, vectors)))


def solve_paper(hvp: HvpFn, rhs: Sequence[torch.Tensor], s: SolverSettings):
    z = [torch.full_like(b, 1.0 / b.numel()) for b in rhs]
    for _ in range(s.paper_loops):
        hz = hvp(z)
        updates = [h + s.lamb * zi - b for h, zi, b in zip(hz, z, rhs)]
        for zi, update in zip(z, updates):
            norm = update.norm()
            if norm > s.paper_clip:
                update = update * (s.paper_clip / norm)
            zi.sub_(s.paper_lr * update)
    return z, SolveInfo(iterations=s.paper_loops)


def solve_identity(hvp: HvpFn, rhs: Sequence[torch.Tensor], s: SolverSettings):
    return [b.clone() for b in rhs], SolveInfo(iterations=0)


def solve_cg(hvp: HvpFn, rhs: Sequence[torch.Tensor], s: SolverSettings):
    """Conjugate gradient from z = 0 on ``(H + lamb I) z = rhs``."""
    z = [torch.zeros_like(b) for b in rhs]
    residual = [b.clone() for b in rhs]
    direction = [b.clone() for b in rhs]
    rhs_norm = _norm(rhs) or 1.0
    rr = dot(residual, residual)
    iterations = 0
    for iterations in range(1, s.cg_iters + 1):
        a_dir = [h + s.lamb * d for h, d in zip(hvp(direction), direction)]
        curvature = dot(direction, a_dir)
        if curvature <= 0:
            logger.debug("cg: non-positive curvature at iteration %d, stopping", iterations)
            if iterations == 1:  # no progress possible along rhs: fall back to it
                z = [b.clone() for b in rhs]
            break
        alpha = rr / curvature
        for zi, d in zip(z, direction):
            zi.add_(alpha * d)
        for r, ad in zip(residual, a_dir):
            r.sub_(alpha * ad)
        rr_new = dot(residual, residual)
        if float(torch.sqrt(rr_new)) / rhs_norm < s.cg_tol:
            rr = rr_new
            break
        beta = rr_new / rr
        rr = rr_new
        direction = [r + beta * d for r, d in zip(residual, direction)]
    return z, SolveInfo(iterations=iterations, residual=float(torch.sqrt(rr)) / rhs_norm)


class TargetMoments:
    """Adam's bias-corrected moments of ``grad f`` over outer steps; ``z = m_hat / (sqrt(v_hat) +
    eps)``. Every rank sees the same reduced ``grad f``, so every rank holds the same moments."""

    def __init__(self, settings: SolverSettings):
        self.settings = settings
        self.steps = 0
        self.first: Tensors | None = None
        self.second: Tensors | None = None

    def __call__(self, hvp: HvpFn | None, rhs: Sequence[torch.Tensor]):
        s = self.settings
        with torch.no_grad():
            if self.first is None:
                self.first = [torch.zeros_like(b) for b in rhs]
                self.second = [torch.zeros_like(b) for b in rhs]
            self.steps += 1
            for m, v, b in zip(self.first, self.second, rhs):
                m.mul_(s.adam_beta1).add_(b, alpha=1 - s.adam_beta1)
                v.mul_(s.adam_beta2).addcmul_(b, b, value=1 - s.adam_beta2)
        return self.current(), SolveInfo(iterations=0)

    def current(self) -> Tensors:
        """``m_hat / (sqrt(v_hat) + eps)`` of the moments so far."""
        s = self.settings
        first_scale = 1 - s.adam_beta1**self.steps
        second_scale = 1 - s.adam_beta2**self.steps
        with torch.no_grad():
            return [
                (m / first_scale) / ((v / second_scale).sqrt() + s.adam_eps)
                for m, v in zip(self.first, self.second)
            ]


class Direction:
    """The z of every outer step: a stateless solver, the ``adam`` moments kept across steps, or
    the ``unrolled`` displacement, which the selector computes (it trains a copy of the proxy)
    and hands over with ``set_fixed``."""

    def __init__(self, settings: SolverSettings):
        if settings.name not in SOLVERS:
            raise ValueError(f"unknown solver '{settings.name}' (known: {', '.join(SOLVERS)})")
        self.settings = settings
        self.moments = TargetMoments(settings) if settings.name == "adam" else None
        self.fixed: Tensors | None = None

    @property
    def needs_hvp(self) -> bool:
        return self.settings.name in NEEDS_HVP

    @property
    def needs_target_gradient(self) -> bool:
        """Whether each outer step's ``grad f`` enters z (``unrolled`` makes its own)."""
        return self.settings.name != "unrolled"

    def set_fixed(self, z: Sequence[torch.Tensor]) -> None:
        self.fixed = [v.detach() for v in z]

    def __call__(self, hvp: HvpFn | None, rhs: Sequence[torch.Tensor] | None):
        if self.settings.name == "unrolled":
            if self.fixed is None:
                raise ValueError("solver 'unrolled': set_fixed() was not called before use")
            return self.fixed, SolveInfo(iterations=0)
        if self.moments is not None:
            return self.moments(hvp, rhs)
        return solve(hvp, rhs, self.settings)


def solve(hvp: HvpFn, rhs: Sequence[torch.Tensor], settings: SolverSettings):
    """``(z, SolveInfo)`` with ``z ~ (H + lamb I)^-1 rhs`` by the named stateless solver."""
    solvers = {"paper": solve_paper, "identity": solve_identity, "cg": solve_cg}
    if settings.name not in solvers:
        raise ValueError(f"unknown solver '{settings.name}' (known: {', '.join(SOLVERS)})")
    with torch.no_grad():
        return solvers[settings.name](hvp, [b.detach() for b in rhs], settings)
