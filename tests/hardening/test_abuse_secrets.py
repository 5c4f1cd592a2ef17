"""The bot token never appears in logs, reprs or error output — at DEBUG level, through a normal session (login,
gateway identify, command sync, interactions, HTTP errors) and through the failure paths (refused token)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import sys
from pathlib import Path

import discord
import pytest

from bot.app import Deps, ImagineBot, sync_commands
from bot.config import Settings
from tests.bot.exts.conftest import RecordingDispatcher
from tests.support.fakediscord import FakeDiscord, pointed_at
from tests.support.hostile import open_test_services

ROOT = Path(__file__).resolve().parents[2]


def secret_parts(token: str) -> list[str]:
    """The token and its secret part alone (the bit after the first dot), which must not leak either."""
    return [token, token.split(".", 1)[-1]]


def leaks(text: str, token: str) -> list[str]:
    return [p for p in secret_parts(token) if p and p in text]


def test_settings_never_show_the_token():
    token = "MTIz.secret-token-value_" + "x" * 20
    s = Settings(_env_file=None, discord_token=token)
    shown = [repr(s), str(s), s.model_dump_json(), str(s.model_dump()), repr(s.discord_token), f"{s.discord_token}"]
    assert all(not leaks(t, token) for t in shown)
    assert s.discord_token.get_secret_value() == token


@contextlib.contextmanager
def debug_log() -> io.StringIO:
    """Every logger at DEBUG into one buffer, formatted with tracebacks, restored afterwards."""
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    names = ["", "discord", "discord.http", "discord.gateway", "discord.client", "bot", "aiohttp", "asyncio"]
    levels = {n: logging.getLogger(n).level for n in names}
    root.addHandler(handler)
    for n in names:
        logging.getLogger(n).setLevel(logging.DEBUG)
    try:
        yield buf
    finally:
        root.removeHandler(handler)
        for n, level in levels.items():
            logging.getLogger(n).setLevel(level)


async def test_a_whole_session_at_debug_level_never_logs_the_token(tmp_path, migrated_template, capfd, reliability):
    """Login, identify, sync, /quota, /imagine, a refused /mod, a 404 from Discord, a refused token: the token is in
    no log line and no output."""
    async with open_test_services(tmp_path, migrated_template, imagine_cooldown_seconds=0) as (settings, services):
        await _session(settings, services, capfd, reliability)


async def _session(settings, services, capfd, reliability) -> None:
    async with FakeDiscord() as fd:
        art = fd.add_channel("art")
        alice = fd.add_user("alice")
        with debug_log() as buf, pointed_at(fd):
            bot = ImagineBot(Deps(settings, services, RecordingDispatcher()))
            async with bot:
                await bot.login(fd.token)
                task = asyncio.create_task(bot.connect(reconnect=False))
                await fd.wait_until_ready()
                await sync_commands(bot, int(fd.guild_id))
                records = [
                    await fd.slash(alice, art, "quota"),
                    await fd.slash(alice, art, "imagine", prompt="a red circle"),
                    await fd.slash(alice, art, "mod pause"),
                ]
                await fd.wait_for(lambda: all(r.callbacks for r in records), 20, "answers")
                with pytest.raises(discord.NotFound):
                    await bot.fetch_channel(1)
                await bot.close()
                with contextlib.suppress(Exception):
                    await task
            # A token Discord refuses.
            wrong = fd.token + "-wrong"
            stranger = ImagineBot(Deps(settings, services, RecordingDispatcher()))
            async with stranger:
                with pytest.raises(discord.LoginFailure):
                    await stranger.login(wrong)
        logged = buf.getvalue()
    out, err = capfd.readouterr()
    assert "IDENTIFY" in logged or "identify" in logged.lower(), logged[-2000:]  # the gateway was really in DEBUG
    assert "/interactions/" in logged  # and so was the HTTP layer
    found = leaks(logged + out + err, fd.token) + leaks(logged + out + err, wrong)
    reliability.record("abuse: bot token in DEBUG logs (session + refused token)", runs=1, failures=int(bool(found)))
    assert not found


def run_cli(*args: str, env: dict[str, str]) -> tuple[int, str]:
    import subprocess

    full = {**os.environ, **env}
    out = subprocess.run([sys.executable, "-m", "bot", *args], cwd=ROOT, env=full, capture_output=True, text=True,
                         timeout=120)
    return out.returncode, out.stdout + out.stderr


async def test_command_line_with_a_refused_token_says_so_without_the_token(tmp_path, reliability):
    """`python -m bot sync` at LOG_LEVEL=DEBUG: with a refused token it exits 2 with a clear line; with the right one
    it syncs. Neither output contains the token."""
    async with FakeDiscord() as fd:
        base = {"DISCORD_API_BASE": fd.api_base, "DISCORD_GATEWAY_URL": fd.gateway_url, "DATA_DIR": str(tmp_path),
                "LOG_LEVEL": "DEBUG"}
        wrong = fd.token + "-wrong"
        rc_wrong, out_wrong = await asyncio.to_thread(run_cli, "sync", "--global", env=base | {"DISCORD_TOKEN": wrong})
        rc_ok, out_ok = await asyncio.to_thread(run_cli, "sync", "--global", env=base | {"DISCORD_TOKEN": fd.token})
    found = leaks(out_wrong, wrong) + leaks(out_ok, fd.token)
    reliability.record("abuse: bot token in command-line output (DEBUG)", runs=2, failures=int(bool(found)))
    assert rc_wrong == 2 and "refused DISCORD_TOKEN" in out_wrong and "Traceback" not in out_wrong, out_wrong[-2000:]
    assert rc_ok == 0 and "synced" in out_ok, out_ok[-2000:]
    assert not found
