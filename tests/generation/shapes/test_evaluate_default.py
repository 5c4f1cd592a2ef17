"""How `python -m generation.shapes.evaluate` picks the default guidance and reports guidance's effect."""

from __future__ import annotations

import numpy as np

from generation.shapes.evaluate import guidance_verdict, paired, pick_default

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


def test_paired_counts_fixed_and_broken_images_and_tests_the_split():
    """Image by image: 10 fixed and none broken is a clear gain (p = 2/2^10); a 5/5 split is no evidence at all."""
    base = np.array([False] * 10 + [True] * 10)  # 4 prompts of 5 images
    better = np.ones(20, bool)
    pair = paired(better, base, per_prompt=5)
    assert (pair.fixed, pair.broken, pair.prompts_better, pair.prompts_worse) == (10, 0, 2, 0)
    assert abs(pair.p_value - 2 / 2**10) < 1e-12
    swapped = paired(np.array([True] * 5 + [False] * 5 + [True] * 5 + [False] * 5), base, per_prompt=5)
    assert (swapped.fixed, swapped.broken, swapped.p_value) == (5, 5, 1.0)
    assert (swapped.prompts_better, swapped.prompts_worse) == (1, 1)
    assert paired(base, base, per_prompt=5).p_value == 1.0


def test_the_verdict_carries_the_paired_comparison():
    results = {1.0: row(0.60), 2.0: row(0.72)}
    pair = paired(np.ones(20, bool), np.array([False] * 10 + [True] * 10), per_prompt=5)
    verdict = guidance_verdict(results, 2.0, pair)
    assert "fixes 10 images and breaks 0" in verdict and "p = 0.002" in verdict and "2 prompts do better, 0 worse" in verdict


def test_more_images_per_prompt_than_one_request_holds_follow_on_seeds(tiny_model_dir, engine, request_for):
    """10 images a prompt take two requests (at most 8 each); image i still comes from seed + i."""
    import io

    from PIL import Image

    from generation.shapes.evaluate import _Sampler

    sampler = _Sampler(tiny_model_dir, direct=False)
    imgs = sampler.run(["a red circle", "a blue star"], [40, 70], 10, guidance=2.0, steps=2)
    assert imgs.shape == (20, 64, 64, 3)
    alone = engine.generate(request_for("a blue star", seed=79, num_images=1, guidance=2.0, steps=2))
    pixels = np.asarray(Image.open(io.BytesIO(alone.images[0].png)).convert("RGB"), dtype=np.int16)
    assert np.abs(imgs[19].astype(np.int16) - pixels).max() <= 1
