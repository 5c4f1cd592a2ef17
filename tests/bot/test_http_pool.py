"""The bot's HTTP pool to Discord has a limit (bot.app.HTTP_CONNECTIONS): a burst of requests waits for a free
keep-alive connection instead of opening one per request (discord.py's own pool has none)."""

from __future__ import annotations

import asyncio

import aiohttp

from bot.app import HTTP_CONNECTIONS, ImagineBot
from bot.config import Settings
from bot.deps import Deps
from tests.support.fakediscord import FakeDiscord, pointed_at


async def test_a_burst_of_requests_shares_at_most_http_connections_connections():
    opened = 0

    async def on_create(session, context, params):
        nonlocal opened
        opened += 1

    trace = aiohttp.TraceConfig()
    trace.on_connection_create_end.append(on_create)
    async with FakeDiscord() as fd:
        with pointed_at(fd):
            bot = ImagineBot(Deps(Settings(discord_token=fd.token)), http_trace=trace)
            async with bot:
                await bot.login(fd.token)
                assert bot.http.connector.limit == HTTP_CONNECTIONS
                session = bot.http._HTTPClient__session  # the session every API call of discord.py goes through
                headers = {"Authorization": f"Bot {fd.token}"}

                async def call() -> int:
                    async with session.get(f"{fd.api_base}/users/@me", headers=headers) as r:
                        await r.read()
                        return r.status

                statuses = await asyncio.gather(*(call() for _ in range(3 * HTTP_CONNECTIONS)))
    assert statuses == [200] * (3 * HTTP_CONNECTIONS)
    assert 1 < opened <= HTTP_CONNECTIONS  # without the limit: one connection per request that found none free
