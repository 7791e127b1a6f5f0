"""The implicit-differentiation hypergradient of BLISS, without per-sample score-model gradients.

Bilevel problem (method-spec section 1.2): the proxy theta_p minimises
``g = sum_i P_i CE_i + gamma * KL + reg * ||theta_p||^2`` with ``P = softmax(s)`` over the global
batch of scores ``s`` from the score model theta_s; the score model minimises the proxy's target-set
loss ``f``. By the implicit function theorem

    dPhi/dtheta_s = -sum_i P_i (grad s_i - sum_j P_j grad s_j) (g_i . z),
    z ~= (H + lamb I)^-1 grad f,  H = d^2 g / d theta_p^2,  g_i = grad CE_i (unweighted).

Two identities make this cheap and exact:

* **Per-sample dot products from one extra backward.** Write the lower loss with the weights as a
  leaf tensor ``w`` (holding the detached ``P``). Then ``grad_theta g = sum_i w_i g_i + ...`` and
  ``d/dw_i (grad_theta g . z) = g_i . z``: a single vector-Jacobian product through the graph that
  ``create_graph=True`` already built for the Hessian-vector products gives every ``c_i = g_i . z``.
* **Surrogate loss.** The gradient of ``-sum_i softmax(s)_i * c_i`` (``c`` detached) with respect to
  theta_s equals the hypergradient above, so one ordinary backward through the score model suffices.
  With ``weights: gibbs`` (``bliss.py``) the scores are the score model's logits and the upper
  objective carries ``temperature * KL(softmax(s) || uniform)``, whose gradient the surrogate adds.
* **Dots without a graph.** When ``z`` needs no Hessian-vector products, ``c_i = g_i . z`` is the
  directional derivative of CE_i along ``z``: a central finite difference of two inference-mode
  forward passes at ``theta +- e z`` (``fd_sample_dots``: any attention kernel, ~2 forwards; with
  the step at 0.1% of the parameter norm it matches the float64 JVP to ~3e-4 relative on a warm
  tiny LM), or forward-mode AD (``jvp_sample_dots``: exact, ~3-4 forwards on CPU).

Distributed use: every rank of the selection group (``group.py``: the job, or its first
``group_size`` ranks) holds a slice of the global batch. ``LowerGraph`` reduces gradients
and Hessian-vector products with a SUM over ranks (each rank's loss is its share of the global
loss), so the solver sees the global operator; scores and ``c`` are all-gathered for the softmax.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist

from megatron_bliss.engine.distributed import rank  # also hg.rank(): a member's is its global rank
from megatron_bliss.selection.group import group_handle
from megatron_bliss.selection.group import group_world_size as world_size  # also hg.world_size()

Tensors = list[torch.Tensor]


def all_reduce_sum(tensors: Sequence[torch.Tensor]) -> Tensors:
    """Sum each tensor over the group's ranks (on a flat copy; returns the reduced tensors)."""
    tensors = list(tensors)
    if world_size() == 1 or not tensors:
        return tensors
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group_handle())
    return [piece.view_as(t) for piece, t in zip(flat.split([t.numel() for t in tensors]), tensors)]


def all_gather_cat(local: torch.Tensor) -> torch.Tensor:
    """Concatenate a 1-D tensor over the group's ranks in rank order (no gradient flows)."""
    if world_size() == 1:
        return local.detach()
    pieces = [torch.empty_like(local) for _ in range(world_size())]
    dist.all_gather(pieces, local.detach().contiguous(), group=group_handle())
    return torch.cat(pieces)


def gather_with_local_grad(local: torch.Tensor) -> torch.Tensor:
    """Global 1-D tensor whose own slice keeps ``local``'s autograd graph (others are constants)."""
    gathered = all_gather_cat(local)
    if world_size() == 1:
        return local
    start = rank() * local.numel()
    return torch.cat([gathered[:start], local, gathered[start + local.numel() :]])


def dot(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> torch.Tensor:
    return sum((x * y).sum() for x, y in zip(a, b))


def surrogate_loss(
    global_scores: torch.Tensor, global_dots: torch.Tensor, temperature: float = 0.0
) -> torch.Tensor:
    """``-sum_i P_i c_i + temperature * sum_i P_i log P_i`` with ``P = softmax(s)``.

    Its gradient w.r.t. theta_s is the implicit hypergradient of the upper objective plus, for
    ``temperature > 0``, that of ``temperature * KL(P || uniform)``. Per score the gradient is
    ``P_i (temperature (s_i - sum_j P_j s_j) - (c_i - sum_j P_j c_j))``: zero when the scores are
    ``c / temperature`` up to a constant, so the entropy term turns the upper level from pushing
    every score without bound along ``c`` into fitting ``c / temperature`` (the Gibbs weights
    ``P ~ exp(c / temperature)`` are the regularised upper level's optimum).
    """
    log_weights = torch.log_softmax(global_scores, dim=0)
    weights = log_weights.exp()
    loss = -(weights * global_dots.detach()).sum()
    if temperature > 0:
        loss = loss + temperature * (weights * log_weights).sum()
    return loss


def explicit_hypergradient(
    score_grads: torch.Tensor, weights: torch.Tensor, dots: torch.Tensor
) -> torch.Tensor:
    """Reference formula ``-sum_i P_i (grad s_i - sum_j P_j grad s_j) c_i`` (rows of score_grads)."""
    mean_grad = (weights[:, None] * score_grads).sum(0)
    return -((weights * dots)[:, None] * (score_grads - mean_grad)).sum(0)


def jvp_sample_dots(
    model: torch.nn.Module,
    inputs: dict[str, torch.Tensor],
    per_sample_loss: Callable[[Any], torch.Tensor],
    z: Sequence[torch.Tensor],
) -> torch.Tensor:
    """``c_i = grad L_i . z`` for every row, as ``d/de L_i(theta + e z)`` at ``e = 0``.

    ``per_sample_loss`` maps ``model(**inputs)``'s output to the (B,) losses; ``z`` follows
    ``model.parameters()`` order.
    """
    from torch.func import functional_call, jvp

    names = [name for name, _ in model.named_parameters()]

    def losses(*params):
        return per_sample_loss(functional_call(model, dict(zip(names, params)), (), inputs))

    primals = tuple(p.detach() for p in model.parameters())
    _, dots = jvp(losses, primals, tuple(v.detach() for v in z))
    return dots.detach()


def fd_sample_dots(
    model: torch.nn.Module,
    per_sample_loss: Callable[[torch.nn.Module], torch.Tensor],
    z: Sequence[torch.Tensor],
    relative_step: float = 1e-3,
) -> torch.Tensor:
    """``c_i ~ (L_i(theta + e z) - L_i(theta - e z)) / 2e`` with ``e ||z|| = relative_step *
    ||theta||``; the parameters are restored exactly from a copy afterwards."""
    params = list(model.parameters())
    with torch.no_grad():
        saved = [p.detach().clone() for p in params]
        z_norm = float(torch.sqrt(dot(z, z)))
        if z_norm == 0.0:
            with torch.inference_mode():
                return torch.zeros_like(per_sample_loss(model))
        step = relative_step * float(torch.sqrt(dot(saved, saved))) / z_norm
        try:
            for p, v in zip(params, z):
                p.add_(v, alpha=step)
            with torch.inference_mode():
                plus = per_sample_loss(model)
            for p, base, v in zip(params, saved, z):
                p.copy_(base).sub_(v, alpha=step)
            with torch.inference_mode():
                minus = per_sample_loss(model)
        finally:
            for p, base in zip(params, saved):
                p.copy_(base)
    return ((plus.double() - minus.double()) / (2.0 * step)).to(plus.dtype)


NORMALIZATIONS = ("none", "standardize", "rank")


def normalize_dots(dots: torch.Tensor, how: str) -> torch.Tensor:
    """The per-sample signal the score model learns from, over the global batch.

    ``standardize`` divides the centred ``c`` by its batch std: the softmax already removes the
    batch mean, and the std removes the step-to-step scale of ``c`` (which follows the proxy's
    gradient norms), so each outer step teaches the score model a ranking of equal weight.
    """
    if how == "none":
        return dots
    if how == "standardize":
        centred = dots - dots.mean()
        return centred / centred.std().clamp_min(torch.finfo(dots.dtype).tiny)
    if how == "rank":
        ranks = torch.argsort(torch.argsort(dots)).to(dots.dtype)
        centred = ranks - ranks.mean()
        return centred / centred.std().clamp_min(torch.finfo(dots.dtype).tiny)
    raise ValueError(f"normalize '{how}' is not one of {', '.join(NORMALIZATIONS)}")


class LowerGraph:
    """``grad_theta g`` with its graph kept, for Hessian-vector products and per-sample dots.

    ``per_sample_ce``: the unweighted per-sequence losses CE_i of this rank's slice (graph to the
    proxy); ``weights``: their softmax weights (detached, this rank's slice); ``extra_loss``: this
    rank's share of the terms that do not depend on the weights (KL, L2). The weighted loss is
    rebuilt here with the weights as a leaf so that ``sample_dots`` can differentiate w.r.t. them.
    """

    def __init__(
        self,
        params: Sequence[torch.Tensor],
        per_sample_ce: torch.Tensor,
        weights: torch.Tensor,
        extra_loss: torch.Tensor | None = None,
    ):
        self.params = list(params)
        self.weights = weights.detach().clone().requires_grad_(True)
        loss = (self.weights * per_sample_ce).sum()
        if extra_loss is not None:
            loss = loss + extra_loss
        grads = torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)
        self.grads = [
            g if g is not None else torch.zeros_like(p) for g, p in zip(grads, self.params)
        ]
        self.num_hvps = 0

    def gradient(self) -> Tensors:
        """The global gradient of g (detached), summed over ranks."""
        return all_reduce_sum([g.detach().clone() for g in self.grads])

    def hvp(self, vector: Sequence[torch.Tensor]) -> Tensors:
        """Global ``H v`` by double backward (no Hessian is formed)."""
        self.num_hvps += 1
        products = torch.autograd.grad(
            self.grads, self.params, grad_outputs=list(vector), retain_graph=True, allow_unused=True
        )
        products = [
            h if h is not None else torch.zeros_like(p) for h, p in zip(products, self.params)
        ]
        return all_reduce_sum(products)

    def sample_dots(self, z: Sequence[torch.Tensor]) -> torch.Tensor:
        """``c_i = g_i . z`` for this rank's samples, from one vector-Jacobian product."""
        (dots,) = torch.autograd.grad(self.grads, [self.weights], grad_outputs=list(z))
        return dots.detach()
