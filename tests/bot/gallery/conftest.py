"""Fixtures of the gallery tests: a seeded database (tests/bot/gallery/seed.py), the gallery app over it with a
fake `channel_is_public`, and an HTTP client speaking to the app in the test's own event loop. The simcord world of
tests/bot/exts is offered here too (for /mod gallery and the bot that serves the gallery itself)."""

from __future__ import annotations

import httpx
import pytest

from bot.gallery.web import create_app
from tests.bot.exts.conftest import migrated_db, world  # noqa: F401 - fixtures for the simcord tests
from tests.bot.gallery.seed import GUILD, NAMES, PUBLIC_CHANNELS, seed


@pytest.fixture
async def seeded(services):
    return await seed(services)


@pytest.fixture
def public_channels() -> set[int]:
    """The channels the fake says @everyone can view; a test may change it."""
    return set(PUBLIC_CHANNELS)


@pytest.fixture
def gallery_settings(settings):
    """The test settings with ALLOWED_GUILD_IDS = the seeded guild (the other guild's job must never show)."""
    return settings.model_copy(update={"allowed_guild_ids": [GUILD]})


@pytest.fixture
def app(services, gallery_settings, seeded, public_channels):
    return create_app(services, gallery_settings, lambda guild, channel: channel in public_channels,
                      member_name=lambda guild, user: NAMES.get(user))


@pytest.fixture
async def client(app):
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gallery.test") as c:
        yield c
