"""Mathematical correctness of the BLISS hypergradient, in float64 on problems with exact answers.

The small problem: the proxy is a softmax regression (convex with an L2 term, so the lower level
has a unique minimiser and (H + lamb I)^-1 can be formed), the score model a sigmoid-linear
scorer, both on random features.
"""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F

from megatron_bliss.selection.hypergrad import (
    LowerGraph,
    explicit_hypergradient,
    surrogate_loss,
)
from megatron_bliss.selection.solvers import SolverSettings, solve

DTYPE = torch.float64
logger = logging.getLogger(__name__)


class SmallProblem:
    def __init__(self, seed=0, n=24, d=5, k=3, reg=0.05, anisotropy=1.0):
        gen = torch.Generator().manual_seed(seed)
        feature_scale = torch.logspace(0, float(torch.tensor(anisotropy).log10()), d, dtype=DTYPE)
        self.x = torch.randn(n, d, generator=gen, dtype=DTYPE) * feature_scale
        self.y = torch.randint(0, k, (n,), generator=gen)
        self.x_val = torch.randn(16, d, generator=gen, dtype=DTYPE)
        self.y_val = torch.randint(0, k, (16,), generator=gen)
        self.score_feat = torch.randn(n, 4, generator=gen, dtype=DTYPE)
        self.theta_s = torch.randn(4, generator=gen, dtype=DTYPE)
        self.theta_p = 0.3 * torch.randn(d, k, generator=gen, dtype=DTYPE)
        self.reg = reg
        self.shape = (d, k)

    def scores(self, theta_s):
        return torch.sigmoid(self.score_feat @ theta_s)

    def per_sample_ce(self, theta_p):
        return F.cross_entropy(self.x @ theta_p, self.y, reduction="none")

    def lower(self, theta_p, weights):
        return (weights * self.per_sample_ce(theta_p)).sum() + self.reg * (theta_p**2).sum()

    def upper(self, theta_p):
        return F.cross_entropy(self.x_val @ theta_p, self.y_val)

    def hessian(self, theta_p, weights):
        flat = theta_p.reshape(-1)
        return torch.autograd.functional.hessian(
            lambda t: self.lower(t.view(self.shape), weights), flat
        )

    def argmin_lower(self, theta_s):
        """Newton's method to machine precision (the lower problem is strongly convex)."""
        weights = torch.softmax(self.scores(theta_s), 0)
        theta = torch.zeros(self.shape, dtype=DTYPE)
        for _ in range(30):
            t = theta.clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.lower(t, weights), t)
            step = torch.linalg.solve(self.hessian(theta, weights), grad.reshape(-1))
            theta = theta - step.view(self.shape)
        return theta

    def exact_hypergradient(self, theta_p, lamb):
        """The implicit formula with an explicit inverse and explicit per-sample score gradients."""
        weights = torch.softmax(self.scores(self.theta_s), 0).detach()
        t = theta_p.clone().requires_grad_(True)
        (grad_f,) = torch.autograd.grad(self.upper(t), t)
        system = self.hessian(theta_p, weights) + lamb * torch.eye(theta_p.numel(), dtype=DTYPE)
        z = torch.linalg.solve(system, grad_f.reshape(-1))
        per_sample = torch.autograd.functional.jacobian(self.per_sample_ce, theta_p)
        dots = per_sample.reshape(len(self.y), -1) @ z
        score_grads = torch.autograd.functional.jacobian(self.scores, self.theta_s)
        return explicit_hypergradient(score_grads, weights, dots)

    def solver_hypergradient(self, theta_p, settings):
        """The production path: LowerGraph HVPs, a solver, sample dots, the surrogate loss."""
        t = theta_p.clone().requires_grad_(True)
        (grad_f,) = torch.autograd.grad(self.upper(t), t)
        theta_s = self.theta_s.clone().requires_grad_(True)
        scores = self.scores(theta_s)
        weights = torch.softmax(scores.detach(), 0)
        graph = LowerGraph([t], self.per_sample_ce(t), weights, self.reg * (t**2).sum())
        z, info = solve(graph.hvp, [grad_f], settings)
        dots = graph.sample_dots(z)
        (hypergrad,) = torch.autograd.grad(surrogate_loss(scores, dots), theta_s)
        return hypergrad, info


def cosine(a, b):
    return float(F.cosine_similarity(a.reshape(1, -1), b.reshape(1, -1)))


def test_hvp_matches_full_hessian_times_vector():
    problem = SmallProblem()
    weights = torch.softmax(problem.scores(problem.theta_s), 0)
    t = problem.theta_p.clone().requires_grad_(True)
    graph = LowerGraph([t], problem.per_sample_ce(t), weights, problem.reg * (t**2).sum())
    vector = torch.randn(problem.shape, dtype=DTYPE, generator=torch.Generator().manual_seed(3))
    (product,) = graph.hvp([vector])
    expected = problem.hessian(problem.theta_p, weights) @ vector.reshape(-1)
    torch.testing.assert_close(product.reshape(-1), expected, rtol=1e-10, atol=1e-12)


def test_hvp_on_tiny_transformer_matches_finite_difference_of_gradients():
    from torch.func import functional_call
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from megatron_bliss.models.presets import build_model

    torch.manual_seed(0)
    # SDPA's math backend: double-backward capable and, unlike transformers' eager attention
    # (softmax in float32), exact in float64, so finite differences can be sharp.
    model = build_model("pythia-tiny", vocab_size=64, attn_implementation="sdpa").double()
    named = dict(model.named_parameters())
    tokens = torch.randint(0, 64, (3, 9))
    weights = torch.tensor([0.2, 0.5, 0.3], dtype=DTYPE)

    def per_sample_ce(params):
        with sdpa_kernel(SDPBackend.MATH):
            logits = functional_call(model, params, args=(), kwargs={"input_ids": tokens[:, :-1]})
        ce = F.cross_entropy(logits.logits.transpose(1, 2), tokens[:, 1:], reduction="none")
        return ce.mean(1)

    graph = LowerGraph(list(named.values()), per_sample_ce(named), weights)
    gen = torch.Generator().manual_seed(1)
    vector = {name: torch.randn(p.shape, dtype=DTYPE, generator=gen) for name, p in named.items()}
    scale = float(torch.sqrt(sum((v**2).sum() for v in vector.values())))
    vector = {name: v / scale for name, v in vector.items()}
    product = graph.hvp(list(vector.values()))

    def gradient_at(shift):
        shifted = {
            n: (p.detach() + shift * vector[n]).requires_grad_(True) for n, p in named.items()
        }
        loss = (weights * per_sample_ce(shifted)).sum()
        return torch.autograd.grad(loss, list(shifted.values()))

    eps = 1e-5
    plus, minus = gradient_at(eps), gradient_at(-eps)
    numeric = torch.cat([((gp - gm) / (2 * eps)).reshape(-1) for gp, gm in zip(plus, minus)])
    analytic = torch.cat([h.reshape(-1) for h in product])
    assert float((analytic - numeric).norm() / numeric.norm()) < 1e-8


def test_surrogate_gradient_equals_explicit_formula():
    problem = SmallProblem(seed=1)
    theta_s = problem.theta_s.clone().requires_grad_(True)
    scores = problem.scores(theta_s)
    dots = torch.randn(len(scores), dtype=DTYPE, generator=torch.Generator().manual_seed(5))
    (via_surrogate,) = torch.autograd.grad(surrogate_loss(scores, dots), theta_s)
    score_grads = torch.autograd.functional.jacobian(problem.scores, problem.theta_s)
    weights = torch.softmax(scores.detach(), 0)
    torch.testing.assert_close(
        via_surrogate, explicit_hypergradient(score_grads, weights, dots), rtol=1e-12, atol=1e-14
    )


def test_softmax_weight_derivative_matches_finite_differences():
    """d/dtheta_s sum_i P_i c_i = sum_i P_i (grad s_i - sum_j P_j grad s_j) c_i."""
    problem = SmallProblem(seed=2)
    dots = torch.randn(24, dtype=DTYPE, generator=torch.Generator().manual_seed(7))
    weights = torch.softmax(problem.scores(problem.theta_s), 0)
    score_grads = torch.autograd.functional.jacobian(problem.scores, problem.theta_s)
    analytic = -explicit_hypergradient(score_grads, weights, dots)
    eps = 1e-6
    for index in range(len(problem.theta_s)):
        step = torch.zeros_like(problem.theta_s)
        step[index] = eps

        def objective(theta_s):
            return float((torch.softmax(problem.scores(theta_s), 0) * dots).sum())

        numeric = (objective(problem.theta_s + step) - objective(problem.theta_s - step)) / (
            2 * eps
        )
        assert abs(numeric - float(analytic[index])) < 1e-8


def test_exact_implicit_hypergradient_matches_finite_difference_of_upper_objective():
    """With lamb = 0 the exact formula is the true derivative of f(theta_p*(theta_s))."""
    problem = SmallProblem(seed=3)
    theta_star = problem.argmin_lower(problem.theta_s)
    exact = problem.exact_hypergradient(theta_star, lamb=0.0)
    eps = 1e-5
    base = problem.theta_s.clone()
    for index in range(len(base)):
        step = torch.zeros_like(base)
        step[index] = eps
        problem.theta_s = base + step
        upper_plus = float(problem.upper(problem.argmin_lower(problem.theta_s)))
        problem.theta_s = base - step
        upper_minus = float(problem.upper(problem.argmin_lower(problem.theta_s)))
        problem.theta_s = base
        assert abs((upper_plus - upper_minus) / (2 * eps) - float(exact[index])) < 1e-7


@pytest.mark.parametrize("seed", [0, 4])
def test_cg_reaches_exact_hypergradient_within_30_iterations(seed):
    """Condition number of H + lamb I: ~440 (seed 0) and ~640 (seed 4).

    Measured cosines with the exact hypergradient: paper 0.74 / -0.31, identity 0.75 / -0.33,
    cg 3 iterations -0.01 / 0.69, cg 10: 0.94 / 0.999, cg 30: 1.0 / 1.0.
    """
    problem = SmallProblem(seed=seed, n=64, d=12, k=5, reg=0.005, anisotropy=10.0)
    lamb = 1e-2
    exact = problem.exact_hypergradient(problem.theta_p, lamb)
    cosines = {}
    for name, iters in [("paper", 0), ("identity", 0), ("cg", 3), ("cg", 10), ("cg", 30)]:
        settings = SolverSettings(name=name, lamb=lamb, cg_iters=iters, cg_tol=1e-12)
        hypergrad, _ = problem.solver_hypergradient(problem.theta_p, settings)
        cosines[f"{name}{iters or ''}"] = round(cosine(hypergrad, exact), 4)
    print(f"seed {seed}: cosine with the exact implicit hypergradient: {cosines}")
    assert cosines["cg30"] > 0.99
    assert cosines["cg30"] >= max(cosines["paper"], cosines["identity"])


def test_cg_solves_the_damped_system():
    problem = SmallProblem(seed=5)
    weights = torch.softmax(problem.scores(problem.theta_s), 0)
    t = problem.theta_p.clone().requires_grad_(True)
    graph = LowerGraph([t], problem.per_sample_ce(t), weights, problem.reg * (t**2).sum())
    rhs = torch.randn(problem.shape, dtype=DTYPE, generator=torch.Generator().manual_seed(2))
    z, info = solve(
        graph.hvp, [rhs], SolverSettings(name="cg", lamb=0.1, cg_iters=40, cg_tol=1e-10)
    )
    system = problem.hessian(problem.theta_p, weights) + 0.1 * torch.eye(t.numel(), dtype=DTYPE)
    torch.testing.assert_close(
        z[0].reshape(-1), torch.linalg.solve(system, rhs.reshape(-1)), rtol=1e-7, atol=1e-9
    )
    assert info.residual < 1e-10
    assert graph.num_hvps == info.iterations


def test_paper_solver_follows_the_authors_update():
    problem = SmallProblem(seed=6)
    weights = torch.softmax(problem.scores(problem.theta_s), 0)
    t = problem.theta_p.clone().requires_grad_(True)
    graph = LowerGraph([t], problem.per_sample_ce(t), weights, problem.reg * (t**2).sum())
    rhs = torch.randn(problem.shape, dtype=DTYPE, generator=torch.Generator().manual_seed(4))
    z, _ = solve(graph.hvp, [rhs], SolverSettings(name="paper", paper_loops=2))
    hessian = problem.hessian(problem.theta_p, weights)
    expected = torch.full((t.numel(),), 1.0 / t.numel(), dtype=DTYPE)
    for _ in range(2):
        update = hessian @ expected + 1e-2 * expected - rhs.reshape(-1)
        update = update / max(1.0, float(update.norm()))
        expected = expected - 1e-2 * update
    torch.testing.assert_close(z[0].reshape(-1), expected)


def test_unknown_solver_is_rejected():
    with pytest.raises(ValueError, match="unknown solver"):
        solve(lambda v: v, [torch.zeros(2)], SolverSettings(name="newton"))
