"""Fixtures of the engine tests: a Hugging Face cache of each test's own, offline."""

from __future__ import annotations

import pytest


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """An empty Hugging Face hub cache in `tmp_path` (HF_HOME there), offline; lay repositories into it with
    `tests.support.tinymodels.put_in_hf_cache`. huggingface_hub reads its environment once, at import, so its
    constants are pointed there too."""
    from huggingface_hub import constants

    home = tmp_path / "hf-home"
    cache = home / "hub"
    cache.mkdir(parents=True)
    for key, value in (("HF_HOME", str(home)), ("HF_HUB_CACHE", str(cache)), ("HF_HUB_OFFLINE", "1")):
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache
