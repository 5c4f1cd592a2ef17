"""The typed bundle the extensions use (bot/deps.py)."""

from __future__ import annotations

import pytest

from bot.config import Settings
from bot.deps import Deps, NotOpened


def test_deps_without_services_refuses_by_name(tmp_path):
    """A Deps built for `python -m bot sync` has settings only: a service or the queue raises NotOpened, never None."""
    d = Deps(Settings(_env_file=None, data_dir=tmp_path))
    assert d.settings.data_dir == tmp_path
    for name in ("jobs", "quota", "moderation", "audit", "images", "sessions", "model_policy"):
        with pytest.raises(NotOpened, match="services are not open"):
            getattr(d, name)


async def test_deps_without_queue_refuses_every_call(tmp_path):
    """The stand-in queue of a Deps without one says so on publish, cancel and kick."""
    d = Deps(Settings(_env_file=None, data_dir=tmp_path))
    for call in (d.dispatcher.cancel(1), d.dispatcher.kick(), d.dispatcher.publish(None)):  # type: ignore[arg-type]
        with pytest.raises(NotOpened, match="job queue is not open"):
            await call


async def test_deps_without_queue_knows_no_models(tmp_path):
    """Asked for the served models or a card, the stand-in queue says it is not open (never an empty answer)."""
    d = Deps(Settings(_env_file=None, data_dir=tmp_path))
    with pytest.raises(NotOpened, match="job queue is not open"):
        await d.dispatcher.served_models()
    with pytest.raises(NotOpened, match="job queue is not open"):
        d.dispatcher.card("tiny")
