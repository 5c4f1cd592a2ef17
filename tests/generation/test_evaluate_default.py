"""How `python -m generation.evaluate` picks the default guidance and reports guidance's effect."""

from __future__ import annotations

from generation.evaluate import guidance_verdict, pick_default

ATTRS = ("kind", "color", "size", "position", "background")


def row(all_: float, kind: float = 0.9) -> dict[str, float]:
    return {**dict.fromkeys(ATTRS, 1.0), "kind": kind, "all": all_}


def test_the_default_is_the_best_guided_scale_even_when_no_guidance_scores_higher():
    results = {1.0: row(0.87), 2.0: row(0.85), 3.0: row(0.86), 5.0: row(0.80)}
    assert pick_default(results) == 3.0
    verdict = guidance_verdict(results, 3.0)
    assert verdict.startswith("Guidance does not help") and "87.0% at scale 1" in verdict and "86.0% at 3" in verdict


def test_a_tie_takes_the_lower_scale_and_a_real_gain_is_reported_as_help():
    results = {1.0: row(0.60, kind=0.7), 2.0: row(0.72, kind=0.8), 3.0: row(0.72, kind=0.8)}
    assert pick_default(results) == 2.0
    verdict = guidance_verdict(results, 2.0)
    assert verdict.startswith("Guidance helps") and "kind 70.0% -> 80.0%" in verdict


def test_only_scale_one_measured():
    results = {1.0: row(0.5)}
    assert pick_default(results) == 1.0
    assert "not shown" in guidance_verdict(results, 1.0)
