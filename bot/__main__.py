"""Run the bot: `python -m bot`, or sync its slash commands on purpose: `python -m bot sync [--guild ID | --global]`.

Start-up: logging, settings, database migrations (`alembic upgrade head`, inside `open_services`), the queue
dispatcher (with NATS_URL unset: an embedded nats-server and a local worker, started by bot.dispatch), then the bot.
Ctrl-C or SIGTERM closes the Discord connection, stops the dispatcher (and the embedded server and worker with it)
and disposes the database engine, in that order.

Commands are never synced on connect. `python -m bot sync` logs in over HTTP only, syncs, and exits: to
`--guild ID` (instant; the default when DEV_GUILD_ID is set) or globally with `--global`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from typing import Any

log = logging.getLogger("bot")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bot", description="Run the Discord image bot.")
    p.add_argument("--log-level", default=None, help="override LOG_LEVEL")
    sub = p.add_subparsers(dest="command")
    s = sub.add_parser("sync", help="sync the slash commands with Discord, then exit")
    where = s.add_mutually_exclusive_group()
    where.add_argument("--guild", type=int, default=None, help="sync to this guild only (instant)")
    where.add_argument("--global", dest="global_", action="store_true", help="sync globally (all servers)")
    return p.parse_args(argv)


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # discord.py's HTTP and gateway chatter is noisy at INFO.
    logging.getLogger("discord.http").setLevel(max(logging.WARNING, logging.getLevelName(level)))
    logging.getLogger("discord.gateway").setLevel(max(logging.WARNING, logging.getLevelName(level)))


@contextlib.asynccontextmanager
async def open_dispatch(settings: Any, services: Any) -> AsyncIterator[Any]:
    """The queue dispatcher of bot.dispatch (embedded NATS and a local worker when NATS_URL is unset)."""
    from bot.dispatch.local import open_dispatcher

    async with open_dispatcher(settings, services) as dispatcher:
        yield dispatcher


async def run_bot(settings: Any) -> None:
    from bot.app import Deps, ImagineBot
    from bot.loopmon import lag_monitor
    from bot.services import open_services

    token = settings.discord_token.get_secret_value()
    async with (
        lag_monitor(getattr(settings, "loop_lag_log", None)),
        open_services(settings) as services,
        open_dispatch(settings, services) as dispatcher,
    ):
        bot = ImagineBot(Deps(settings, services, dispatcher))
        async with bot:
            await bot.login(token)  # runs setup_hook: extensions are loaded, the presenter exists
            # Follow the queue only now: results found at start-up are posted through the presenter.
            report = await dispatcher.start(listener=bot.presenter)
            if report is not None:
                log.info("reconciled unfinished jobs: %s", report)
            log.info("bot starting (commands are not synced on connect; use `python -m bot sync`)")
            await bot.connect(reconnect=True)


async def run_sync(settings: Any, guild_id: int | None) -> None:
    from bot.app import Deps, ImagineBot, sync_commands

    bot = ImagineBot(Deps(settings, None, None))
    async with bot:
        await bot.login(settings.discord_token.get_secret_value())
        synced = await sync_commands(bot, guild_id)
    print(f"synced {len(synced)} command(s) " + (f"to guild {guild_id}" if guild_id else "globally"))


async def _until_signal(main: Any) -> None:
    """Run `main`; SIGTERM/SIGINT cancel it so every `async with` above closes in order."""
    task = asyncio.ensure_future(main)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, task.cancel)
    try:
        await task
    except asyncio.CancelledError:
        log.info("stopped")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from bot.app import point_at_discord
    from bot.config import get_settings

    settings = get_settings()
    setup_logging((args.log_level or settings.log_level).upper())
    if settings.discord_token is None:
        log.error("DISCORD_TOKEN is not set; put the bot token in the environment or in .env (see .env.example)")
        return 2
    point_at_discord(getattr(settings, "discord_api_base", None), getattr(settings, "discord_gateway_url", None))
    import discord

    try:
        if args.command == "sync":
            guild = None if args.global_ else (args.guild or getattr(settings, "dev_guild_id", None))
            asyncio.run(run_sync(settings, guild))
            return 0
        asyncio.run(_until_signal(run_bot(settings)))
    except discord.LoginFailure:
        # Never echo the token itself: say which setting is wrong and where to get a new one.
        log.error("Discord refused DISCORD_TOKEN (401 Unauthorized); copy a new one from the developer portal "
                  "(Bot → Reset Token) into the environment or .env")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
