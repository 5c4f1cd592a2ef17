"""`python -m bot` on the command line, without Discord."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str, **env: str) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "DISCORD_TOKEN": "", **env}
    return subprocess.run([sys.executable, "-m", "bot", *args], cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=60)


def test_missing_token_is_a_clear_error(tmp_path):
    """Without DISCORD_TOKEN the bot exits with status 2 and says which setting to fill in."""
    out = run(DATA_DIR=str(tmp_path))
    assert out.returncode == 2 and "DISCORD_TOKEN is not set" in out.stderr


def test_sync_offers_guild_or_global_but_not_both():
    """`sync --guild` and `sync --global` exclude each other."""
    out = run("sync", "--guild", "1", "--global")
    assert out.returncode == 2 and "not allowed with argument" in out.stderr


async def test_sync_global_registers_every_command(tmp_path):
    """`python -m bot sync --global` registers every command, /mod hidden behind Manage Server, over HTTP only."""
    import asyncio

    from tests.support.fakediscord import FakeDiscord

    async with FakeDiscord() as fd:
        out = await asyncio.to_thread(
            run, "sync", "--global", DISCORD_TOKEN=fd.token, DISCORD_API_BASE=fd.api_base,
            DISCORD_GATEWAY_URL=fd.gateway_url, DATA_DIR=str(tmp_path),
        )
        assert out.returncode == 0, out.stderr[-2000:]
        names = sorted(c["name"] for c in fd.commands["global"])
        assert {"describe", "help", "history", "imagine", "mod", "quota", "show"} <= set(names), names
        # The message context menus ("Describe this image", "Imagine from this image") are registered as such.
        menus = {c["name"]: c["type"] for c in fd.commands["global"] if c["type"] == 3}
        assert menus == {"Describe this image": 3, "Imagine from this image": 3}, names
        mod = next(c for c in fd.commands["global"] if c["name"] == "mod")
        assert int(mod["default_member_permissions"]) == 1 << 5  # Manage Server
        assert fd.guild_id not in fd.commands and fd.identified == 0  # HTTP only, no gateway session
