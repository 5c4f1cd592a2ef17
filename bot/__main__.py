"""Run the bot: `python -m bot`, or sync its slash commands on purpose: `python -m bot sync [--guild ID | --global]`.

Data: `python -m bot backup [--to PATH] [--keep N]` (a consistent archive of the database and images, also while
the bot runs; `--keep` deletes all but the newest N archives it made) and `python -m bot restore PATH [--force]`
(with the bot stopped); see bot/backup.py.

Everything the bot writes is private to its user: `main` sets the umask to 077 before anything else, and
`secure_data_dir` makes the data folder 0700 and the database 0600, also when an older version made them readable.

Start-up: Pillow's decoding limit (`bot.ui.images.limit_pillow`), logging, settings, database migrations (`alembic upgrade head`, inside `open_services`), the queue
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
import gc
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bot.config import Settings
    from bot.dispatch import Dispatcher
    from bot.services import Services

log = logging.getLogger("bot")

#: The bot's files (database, images, backups, the embedded queue's store, logs it writes) are its user's alone.
UMASK = 0o077


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bot", description="Run the Discord image bot.")
    p.add_argument("--log-level", default=None, help="override LOG_LEVEL")
    sub = p.add_subparsers(dest="command")
    s = sub.add_parser("sync", help="sync the slash commands with Discord, then exit")
    where = s.add_mutually_exclusive_group()
    where.add_argument("--guild", type=int, default=None, help="sync to this guild only (instant)")
    where.add_argument("--global", dest="global_", action="store_true", help="sync globally (all servers)")
    b = sub.add_parser("backup", help="write a backup archive of the database and images (safe while the bot runs)")
    b.add_argument("--to", type=Path, default=None,
                   help="archive file (….tar.gz) or folder for it (default: backups/ next to the data folder)")
    b.add_argument("--keep", type=_keep_count, default=None, metavar="N",
                   help="then delete all but the newest N archives this command made in that folder")
    r = sub.add_parser("restore", help="replace the database and images with a backup's (bot stopped)")
    r.add_argument("path", type=Path, help="a backup archive (or an unpacked backup folder)")
    r.add_argument("--force", action="store_true", help="restore even though the bot seems to be running")
    return p.parse_args(argv)


def _keep_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"--keep takes a whole number of archives, 1 or more, not {text!r}")
    return value


def secure_data_dir(settings: Settings) -> None:
    """Create the data folder 0700 (or make an existing one 0700) and make the SQLite database files 0600: they hold
    every prompt, image and per-job secret. Called at start, after the umask is set."""
    data_dir = Path(settings.data_dir)
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(data_dir, 0o700)
    from bot.backup import BackupError, database_path

    try:
        db = database_path(settings.database_url)
    except BackupError:  # not a SQLite file: nothing of ours to protect here
        return
    for path in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        if path.exists():
            os.chmod(path, 0o600)


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
async def open_dispatch(settings: Settings, services: Services) -> AsyncIterator[Dispatcher]:
    """The queue dispatcher of bot.dispatch (embedded NATS and a local worker when NATS_URL is unset)."""
    from bot.dispatch.local import open_dispatcher

    async with open_dispatcher(settings, services) as dispatcher:
        yield dispatcher


async def run_bot(settings: Settings) -> None:
    from bot.backup import running_lock

    secure_data_dir(settings)
    # The shared lock tells `python -m bot restore` that the data folder is in use.
    with running_lock(settings.data_dir):
        await _run_bot(settings)


async def _run_bot(settings: Settings) -> None:
    from bot.app import ImagineBot
    from bot.deps import Deps
    from bot.gcpace import paced_collections
    from bot.loopmon import lag_monitor
    from bot.services import open_services

    token = settings.discord_token.get_secret_value()
    async with (
        lag_monitor(settings.loop_lag_log),
        open_services(settings) as services,
        open_dispatch(settings, services) as dispatcher,
    ):
        bot = ImagineBot(Deps(settings, services, dispatcher), keep_storage=True)
        async with bot:
            await bot.login(token)  # runs setup_hook: extensions are loaded, the presenter exists
            # Follow the queue only now: results found at start-up are posted through the presenter.
            report = await dispatcher.start(listener=bot.presenter)
            if report is not None:
                log.info("reconciled unfinished jobs: %s", report)
            freeze_startup_heap()
            log.info("bot starting (commands are not synced on connect; use `python -m bot sync`)")
            async with paced_collections():
                await bot.connect(reconnect=True)


def freeze_startup_heap() -> None:
    """Keep garbage collection out of the event loop's way (bench/bot_burst.py: a full collection stopped the loop
    for a quarter of a second under load).

    Everything alive after start-up (the imported libraries, the migrations, the services) is taken out of the
    collector's view (`gc.freeze`): a full collection walks only what the bot made since. Full collections still
    take a hundred milliseconds and more in a burst, with thousands of interactions in flight, so Python starts one
    itself only after FULL_GC_CEILING middle collections (its default is 10); the bot runs them in quiet seconds
    instead (bot/gcpace.py). The young generations, where nearly all garbage dies, are collected as before."""
    from bot.gcpace import FULL_GC_CEILING

    gc.collect()
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, FULL_GC_CEILING)


async def run_sync(settings: Settings, guild_id: int | None) -> None:
    from bot.app import ImagineBot, sync_commands
    from bot.deps import Deps

    bot = ImagineBot(Deps(settings))
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


def run_data_command(args: argparse.Namespace, settings: Settings) -> int:
    """`backup` and `restore` (no Discord involved)."""
    from bot.backup import BackupError, backup, restore

    try:
        if args.command == "backup":
            done = backup(settings.data_dir, settings.database_url, args.to, keep=args.keep)
            print(f"backup written to {done.path}: {done.jobs} job(s), {done.images} image(s) in the database, "
                  f"{done.files} file(s), {done.seconds:.1f} s")
            if done.rotated:
                print(f"deleted {len(done.rotated)} older backup(s) (--keep {args.keep}): "
                      + ", ".join(p.name for p in done.rotated))
            if done.missing:
                print(f"warning: {len(done.missing)} image file(s) named by the database were missing", file=sys.stderr)
            return 0
        done = restore(args.path, settings.data_dir, settings.database_url, force=args.force)
    except BackupError as exc:
        log.error("%s failed: %s", args.command, exc)
        return 1
    print(f"restored {done.jobs} job(s) and {done.images} image(s) from {args.path}"
          + (f"; the previous data is in {done.previous}" if done.previous else "")
          + (f"; new jobs get ids from {done.next_job_id} on" if done.next_job_id else "")
          + ". Start the bot: it migrates the database if needed and re-queues unfinished jobs.")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    # Before anything is written: the data folder, database, images, backups and the queue's store stay private.
    os.umask(UMASK)
    args = parse_args(argv)
    from bot.app import point_at_discord
    from bot.config import get_settings
    from bot.ui.images import limit_pillow

    # Pillow refuses images larger than any the bot can be sent before it allocates their pixels.
    limit_pillow()

    settings = get_settings()
    setup_logging((args.log_level or settings.log_level).upper())
    if args.command in ("backup", "restore"):
        return run_data_command(args, settings)
    if settings.discord_token is None:
        log.error("DISCORD_TOKEN is not set; put the bot token in the environment or in .env (see .env.example)")
        return 2
    point_at_discord(settings.discord_api_base, settings.discord_gateway_url)
    import discord

    from generation.protocol.queue import ConnectRefused

    try:
        if args.command == "sync":
            guild = None if args.global_ else (args.guild or settings.dev_guild_id)
            asyncio.run(run_sync(settings, guild))
            return 0
        asyncio.run(_until_signal(run_bot(settings)))
    except discord.LoginFailure:
        # Never echo the token itself: say which setting is wrong and where to get a new one.
        log.error("Discord refused DISCORD_TOKEN (401 Unauthorized); copy a new one from the developer portal "
                  "(Bot → Reset Token) into the environment or .env")
        return 2
    except ConnectRefused as exc:
        # The queue's server refused the login or the TLS handshake: the message names the URL (no password) and
        # the settings to check. Retrying cannot help.
        log.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
