"""BLISS's default variant against explicit definitions: the adam direction, the graph-free
per-sample dots, the standardized signal, and the ``paper`` variant's settings."""

from __future__ import annotations

import pytest
import torch

from megatron_bliss.models.presets import build_model
from megatron_bliss.selection.bliss import PAPER_SETTINGS, BlissSelector, restricted_to_blocks
from megatron_bliss.selection.hypergrad import (
    LowerGraph,
    fd_sample_dots,
    jvp_sample_dots,
    normalize_dots,
    surrogate_loss,
)
from megatron_bliss.selection.proxy import lm_logits, sdpa_math, sequence_ce, token_ce
from megatron_bliss.selection.solvers import Direction, SolverSettings


@pytest.fixture(scope="module")
def model_and_tokens():
    torch.manual_seed(0)
    model = build_model("pythia-tiny", 512, 33, attn_implementation="sdpa").double()
    tokens = torch.randint(0, 512, (5, 17))
    z = [torch.randn_like(p) for p in model.parameters()]
    return model, tokens, z


def graph_dots(model, tokens, z):
    with sdpa_math():
        ce = sequence_ce(lm_logits(model, tokens), tokens)
        weights = torch.full((len(tokens),), 1.0 / len(tokens), dtype=torch.float64)
        return LowerGraph(list(model.parameters()), ce, weights).sample_dots(z)


def test_jvp_dots_equal_the_double_backward_dots(model_and_tokens):
    model, tokens, z = model_and_tokens
    with sdpa_math():
        jvp = jvp_sample_dots(
            model, {"input_ids": tokens[:, :-1]}, lambda out: sequence_ce(out.logits, tokens), z
        )
    torch.testing.assert_close(jvp, graph_dots(model, tokens, z), rtol=1e-10, atol=1e-12)


def test_finite_difference_dots_match_and_leave_the_parameters_unchanged(model_and_tokens):
    model, tokens, z = model_and_tokens
    before = [p.detach().clone() for p in model.parameters()]
    fd = fd_sample_dots(model, lambda m: sequence_ce(lm_logits(m, tokens), tokens), z, 1e-5)
    torch.testing.assert_close(fd, graph_dots(model, tokens, z), rtol=1e-6, atol=1e-9)
    for parameter, saved in zip(model.parameters(), before):
        assert torch.equal(parameter, saved)


def test_adam_direction_is_the_bias_corrected_moment_ratio():
    settings = SolverSettings(name="adam", adam_beta1=0.8, adam_beta2=0.9, adam_eps=1e-3)
    direction = Direction(settings)
    gradients = [torch.tensor([1.0, -2.0, 0.5]), torch.tensor([3.0, 1.0, -1.0])]
    m = torch.zeros(3, dtype=torch.float64)
    v = torch.zeros(3, dtype=torch.float64)
    for t, g in enumerate(gradients, start=1):
        z, _ = direction(None, [g])
        m = 0.8 * m + 0.2 * g.double()
        v = 0.9 * v + 0.1 * g.double() ** 2
        expected = (m / (1 - 0.8**t)) / ((v / (1 - 0.9**t)).sqrt() + 1e-3)
        torch.testing.assert_close(z[0].double(), expected, rtol=1e-6, atol=1e-7)
    assert not direction.needs_hvp


def test_rank_signal_keeps_only_the_order_of_the_dots():
    dots = torch.tensor([3.0, -1.0, 0.5, 1000.0], dtype=torch.float64)
    signal = normalize_dots(dots, "rank")
    expected = torch.tensor([1.0, -3.0, -1.0, 3.0], dtype=torch.float64) / (20.0 / 3.0) ** 0.5
    torch.testing.assert_close(signal, expected)  # centred ranks 0..3 at unit std
    assert torch.equal(normalize_dots(dots * 7.0 - 2.0, "rank"), signal)


def test_standardized_signal_has_zero_mean_unit_std_and_its_surrogate_is_the_hypergradient():
    dots = torch.tensor([3.0, -1.0, 0.5, 10.0], dtype=torch.float64)
    signal = normalize_dots(dots, "standardize")
    assert float(signal.mean()) == pytest.approx(0.0, abs=1e-12)
    assert float(signal.std()) == pytest.approx(1.0)
    assert torch.equal(normalize_dots(dots, "none"), dots)
    # with the standardized c, d(surrogate)/d(s_i) = -P_i (c_i - sum_j P_j c_j) as for raw c
    scores = torch.tensor([0.2, 0.4, 0.6, 0.1], dtype=torch.float64, requires_grad=True)
    surrogate_loss(scores, signal).backward()
    weights = torch.softmax(scores.detach(), 0)
    expected = -weights * (signal - (weights * signal).sum())
    torch.testing.assert_close(scores.grad, expected)


def test_gibbs_surrogate_adds_the_kl_gradient_and_is_stationary_at_scores_c_over_temperature():
    signal = torch.tensor([1.5, -0.5, 0.2, -1.2], dtype=torch.float64)
    scores = torch.tensor([0.3, -0.1, 0.8, 0.0], dtype=torch.float64, requires_grad=True)
    surrogate_loss(scores, signal, temperature=2.0).backward()
    weights = torch.softmax(scores.detach(), 0)
    log_weights = weights.log()
    expected = -weights * (signal - (weights * signal).sum()) + 2.0 * weights * (
        log_weights - (weights * log_weights).sum()
    )  # the hypergradient plus that of 2 * KL(P || uniform)
    torch.testing.assert_close(scores.grad, expected)
    at_optimum = (signal / 2.0 + 7.0).requires_grad_(True)  # any shift: softmax ignores it
    surrogate_loss(at_optimum, signal, temperature=2.0).backward()
    torch.testing.assert_close(at_optimum.grad, torch.zeros(4, dtype=torch.float64))


def test_gibbs_weights_use_the_logits_and_paper_weights_the_sigmoid_scores(model_and_tokens):
    from megatron_bliss.selection.score_model import ScoreModel

    model, tokens, _ = model_and_tokens
    selector = BlissSelector.__new__(BlissSelector)
    selector.score_model = ScoreModel.from_causal_lm(model, head_init_std=1.0)
    logits = selector.score_model.logits(tokens[:, :-1])
    for weights, expected in (("gibbs", logits), ("paper", torch.sigmoid(logits))):
        selector.config = BlissSelector.Config(weights=weights)
        torch.testing.assert_close(selector._weight_scores(tokens), expected)
    assert BlissSelector.Config(weights="paper").entropy_weight == 0.0
    assert BlissSelector.Config(temperature=0.5).entropy_weight == 0.5


def test_a_blocks_direction_is_zero_outside_the_transformer_blocks(model_and_tokens):
    model, _, z = model_and_tokens
    restricted = dict(zip([n for n, _ in model.named_parameters()], restricted_to_blocks(model, z)))
    for (name, _), original in zip(model.named_parameters(), z):
        in_block = name.startswith("gpt_neox.layers.")
        assert torch.equal(restricted[name], original if in_block else torch.zeros_like(original))
    outside = [n for n in restricted if not n.startswith("gpt_neox.layers.")]
    assert {"gpt_neox.embed_in.weight", "lm_head.weight"} <= set(outside)


def explicit_token_dots(model, tokens, z):
    """``grad l_t . z`` of every position, one backward per token."""
    rows = []
    for row in tokens:
        losses = token_ce(lm_logits(model, row[None]), row[None])[0]
        dots = []
        for loss in losses:
            grads = torch.autograd.grad(loss, list(model.parameters()), retain_graph=True)
            dots.append(sum((g * v).sum() for g, v in zip(grads, z)))
        rows.append(torch.stack(dots))
    return torch.stack(rows)


@pytest.mark.parametrize("dots, rtol", [("fd", 2e-4), ("jvp", 1e-8)])  # fd: central differences
def test_consistency_dots_are_the_cosine_of_the_per_token_alignments_with_a_constant(
    model_and_tokens, dots, rtol
):
    model, tokens, z = model_and_tokens
    selector = BlissSelector.__new__(BlissSelector)
    selector.proxy = model
    selector.config = BlissSelector.Config(alignment="consistency", dots=dots)
    with sdpa_math():
        per_token = explicit_token_dots(model, tokens, z)
        got = selector.alignment(tokens, z)
    expected = per_token.mean(1) / per_token.pow(2).mean(1).sqrt()
    torch.testing.assert_close(got, expected, rtol=rtol, atol=1e-10)
    assert bool((got.abs() <= 1).all())
    # scale-free along z; the mean aggregate is g_i . z, the mean of the same per-token dots
    scaled = selector.alignment(tokens, [v * 9.0 for v in z])
    torch.testing.assert_close(scaled, got, rtol=rtol, atol=1e-10)
    selector.config = BlissSelector.Config(alignment="dot", dots=dots)
    torch.testing.assert_close(
        selector.alignment(tokens, z), per_token.mean(1), rtol=rtol, atol=1e-10
    )


@pytest.mark.parametrize("chunk", [16, 2])  # 5 rows: one chunk, or 2 + 2 + 1
def test_cosine_dots_divide_g_i_dot_z_by_the_per_sample_gradient_norm(model_and_tokens, chunk):
    model, tokens, z = model_and_tokens
    selector = BlissSelector.__new__(BlissSelector)
    selector.proxy = model
    selector.config = BlissSelector.Config(alignment="cosine", per_sample_chunk=chunk)
    expected = []
    with sdpa_math():
        for row in tokens:
            loss = sequence_ce(lm_logits(model, row[None]), row[None])[0]
            grads = torch.autograd.grad(loss, list(model.parameters()))
            norm = torch.sqrt(sum((g * g).sum() for g in grads))
            expected.append(sum((g * v).sum() for g, v in zip(grads, z)) / norm)
        got = selector.alignment(tokens, z)
    torch.testing.assert_close(got, torch.stack(expected), rtol=1e-10, atol=1e-12)


def test_cosine_divides_the_double_backward_dots_too(model_and_tokens):
    """Solvers with HVPs take their dots from the lower graph; cosine scales them the same way."""
    model, tokens, z = model_and_tokens
    selector = BlissSelector.__new__(BlissSelector)
    selector.proxy = model
    selector.config = BlissSelector.Config(alignment="cosine")
    expected = selector.alignment(tokens, z)
    selector.config = BlissSelector.Config(alignment="cosine", solver="cg", dots="graph")
    got = selector._per_sample_scaled(graph_dots(model, tokens, z), tokens)
    torch.testing.assert_close(got, expected, rtol=1e-8, atol=1e-10)


def test_paper_variant_applies_the_authors_settings_over_the_keys():
    config = BlissSelector.Config(variant="paper", solver="adam", normalize="standardize",
                                  dots="fd", upper_batch_size=64)  # fmt: skip
    for name, value in PAPER_SETTINGS.items():
        assert getattr(config, name) == value
    assert config.draws_per_step == config.batch_size


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"solver": "cg", "dots": "fd"}, "needs dots 'graph'"),
        ({"normalize": "cosine"}, "normalize 'cosine'"),
        ({"variant": "fast"}, "variant 'fast'"),
        ({"upper_batch_size": 0}, "upper_batch_size must be >= 1"),
        ({"per_sample_chunk": 0}, "per_sample_chunk must be >= 1"),
        ({"direction_params": "heads"}, "direction_params 'heads'"),
        ({"weights": "sigmoid"}, "weights 'sigmoid'"),
        ({"temperature": 0.0}, "temperature must be > 0"),
        ({"score_head": "mlp"}, "score_head 'mlp'"),
        ({"score_scale": -1.0}, "score_scale must be > 0"),
        ({"alignment": "consistency", "dots": "graph"}, "needs dots 'fd' or 'jvp'"),
        ({"alignment": "consistency", "solver": "cg"}, "needs dots 'fd' or 'jvp'"),
        ({"alignment": "median"}, "alignment 'median'"),
        ({"score_params": "head"}, "score_params 'head'"),
    ],
)
def test_invalid_settings_are_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        BlissSelector.Config(**changes)
