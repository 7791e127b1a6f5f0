"""The compare report's outcome sentence says what the seeds can support."""

from __future__ import annotations

from megatron_bliss.eval.compare_report import outcome


def result(bliss: list[float], random: list[float]) -> dict:
    def entry(values):
        return {"target_loss": {"mean": sum(values) / len(values), "per_seed": values}}

    return {
        "methods": ["bliss", "random"],
        "baseline": "random",
        "seeds": list(range(len(bliss))),
        "summary": {"bliss": entry(bliss), "random": entry(random)},
    }


def test_one_seed_makes_no_claim_about_noise():
    sentence = outcome(result([5.0], [5.2]))
    assert sentence.startswith("bliss has the lowest") and "one seed cannot show" in sentence


def test_several_seeds_compare_the_gap_with_twice_its_std():
    assert "more than twice" in outcome(result([5.0, 5.01, 5.02], [5.2, 5.2, 5.21]))
    assert "not more than twice" in outcome(result([5.0, 5.2, 5.1], [5.2, 5.1, 5.15]))
