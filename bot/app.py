"""The discord.py application: `ImagineBot`, and `sync_commands` for syncing slash commands on purpose.

The operator's allow-list (setting ALLOWED_GUILD_IDS) is enforced here: the bot leaves a guild that is not on it
when it is added to one (`on_guild_join`, `on_guild_available`) and at start (`on_ready`), logging why, and its command tree refuses
commands from such a guild (`ImagineTree.interaction_check`; the job buttons check it too).

Resources (database, services, queue dispatcher) are opened by the caller (`bot/__main__.py`, or a test) and handed
in as `deps`; the bot only uses them. `setup_hook` registers the dynamic job buttons and loads the extensions; it
never syncs commands, so a reconnect costs no API calls. Syncing is its own command: `python -m bot sync`.

With `keep_storage` (what `python -m bot` passes), `setup_hook` also starts the storage keeper
(`bot.services.retention.StorageKeeper`: image files removed after IMAGE_RETENTION_DAYS, a warning when the data
disk is nearly full); `close` stops it. Tests that move a simulated clock by weeks leave it off and run a sweep
themselves.

With GALLERY_PORT set, `setup_hook` also starts the web gallery (bot.gallery) in this event loop; `close` stops it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import discord
import yarl
from discord.ext import commands

from bot.deps import Deps
from bot.exts import EXTENSIONS
from bot.exts.common import GuildNotAllowed, add_option_checks, guild_allowed
from bot.ui.buttons import JobButton

log = logging.getLogger("bot.app")

DISCORD_API_BASE = "https://discord.com/api/v10"
DISCORD_GATEWAY_URL = "wss://gateway.discord.gg/"
#: Most connections the bot keeps open to Discord's API (and its CDN) at once; more requests wait for a free one.
#: discord.py's own pool has no limit: in a burst of 2,000 /imagine it opened a connection for every deferral that
#: found none free, 376 of them, each a TLS handshake with the real Discord (docs/benchmarks.md, "Bot scale").
HTTP_CONNECTIONS = 100


def point_at_discord(api_base: str | None, gateway_url: str | None) -> None:
    """Send HTTP and gateway traffic to `api_base` / `gateway_url` (a Discord-compatible server), or Discord's own.

    discord.py keeps both as class attributes, so this is process-wide; webhooks and interaction responses use the
    same HTTP base.
    """
    discord.http.Route.BASE = (api_base or DISCORD_API_BASE).rstrip("/")
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(gateway_url or DISCORD_GATEWAY_URL)


def make_intents() -> discord.Intents:
    """Slash commands only: no message content, no members list."""
    intents = discord.Intents.default()
    intents.message_content = False
    intents.members = False
    intents.presences = False
    intents.typing = False
    return intents


class ImagineTree(discord.app_commands.CommandTree):
    """The command tree: refuses every command from a guild the operator does not allow (ALLOWED_GUILD_IDS)."""

    async def interaction_check(self, interaction: discord.Interaction, /) -> bool:
        if interaction.guild_id is not None and not guild_allowed(self.client, interaction.guild_id):
            log.warning("refused /%s from guild %s: not in ALLOWED_GUILD_IDS",
                        getattr(interaction.command, "qualified_name", "?"), interaction.guild_id)
            raise GuildNotAllowed()
        return True


class ImagineBot(commands.Bot):
    """The bot. `deps` carries the settings, services and queue the extensions use (bot/deps.py)."""

    def __init__(self, deps: Deps, *, extensions: tuple[str, ...] = EXTENSIONS, keep_storage: bool = False,
                 **options: Any):
        options.setdefault("intents", make_intents())
        options.setdefault("allowed_mentions", discord.AllowedMentions.none())
        options.setdefault("help_command", None)
        options.setdefault("tree_cls", ImagineTree)
        # No message cache: nothing reads it (slash commands and buttons carry what they need), and a thousand
        # cached messages with their embeds and buttons only make every full garbage collection longer.
        options.setdefault("max_messages", None)
        super().__init__(command_prefix=commands.when_mentioned, **options)
        self.deps = deps
        self.extensions_to_load = extensions
        #: Set by the buttons extension: the object that handles a click on a JobButton.
        self.job_actions: Any = None
        #: Set by the imagine extension: the object that shows a job's progress and posts its result.
        self.presenter: Any = None
        #: The retention sweeper and disk watch (bot.services.retention), running while the bot does.
        self.storage: Any = None
        self.keep_storage = keep_storage
        #: The web gallery (bot.gallery.server.GalleryServer) while GALLERY_PORT is set; None otherwise.
        self.gallery: Any = None

    # discord.py reads gateway events in a loop that waits only when none is buffered, so a burst of interactions
    # that arrive together is parsed in one step of the event loop (a quarter of a second for 200 on a loaded
    # machine), and nothing else, not even their deferrals, runs meanwhile. The gateway connection is wrapped as
    # discord.py sets it, to let the loop run other work after each event.
    @property
    def ws(self) -> Any:
        return self.__dict__.get("_gateway_ws")

    @ws.setter
    def ws(self, value: Any) -> None:
        if isinstance(value, discord.gateway.DiscordWebSocket):
            value.poll_event = _yield_after(value.poll_event)  # type: ignore[method-assign]
        self.__dict__["_gateway_ws"] = value

    def dispatch(self, event_name: str, /, *args: Any, **kwargs: Any) -> None:
        # A modal submission is also dispatched as `modal_submit`, which the extensions listen to (the remix, region
        # and image modals, matched by custom_id), so that no extension listens to every `interaction`: each
        # listener is a task per interaction, slash commands and clicks included, and in a burst of /imagine those
        # tasks took loop time from the acknowledgements.
        if event_name == "interaction" and args and getattr(args[0], "type", None) is discord.InteractionType.modal_submit:
            super().dispatch("modal_submit", *args, **kwargs)
        super().dispatch(event_name, *args, **kwargs)

    async def login(self, token: str) -> None:
        if self.http.connector is discord.utils.MISSING:  # none given by the caller: a pool with a limit
            self.http.connector = aiohttp.TCPConnector(limit=HTTP_CONNECTIONS)
        await super().login(token)

    async def setup_hook(self) -> None:
        self.add_dynamic_items(JobButton)
        for name in self.extensions_to_load:
            await self.load_extension(name)
        # Every option is checked against its declared bounds here too, not only by Discord's client.
        add_option_checks(self.tree)
        if self.keep_storage and self.deps.services is not None and self.storage is None:
            from bot.services.retention import StorageKeeper

            self.storage = StorageKeeper(self.deps.settings, self.deps.services)
            self.storage.start()
        if self.deps.settings.gallery_port is not None and self.deps.services is not None and self.gallery is None:
            # The web gallery (GALLERY_PORT), served by this event loop over the same database and image store.
            from bot.gallery.server import start_gallery

            self.gallery = await start_gallery(self)
        log.info("loaded %d extensions; commands are synced only by `python -m bot sync`", len(self.extensions_to_load))

    async def close(self) -> None:
        if self.gallery is not None:
            await self.gallery.stop()
            self.gallery = None
        if self.storage is not None:
            await self.storage.stop()
        await super().close()

    async def on_ready(self) -> None:
        log.info("connected as %s (%s) to %d guild(s)", self.user, getattr(self.user, "id", "?"), len(self.guilds))
        for guild in list(self.guilds):
            await self.leave_if_not_allowed(guild)

    async def on_guild_join(self, guild: discord.Guild) -> None:
        await self.leave_if_not_allowed(guild)

    async def on_guild_available(self, guild: discord.Guild) -> None:
        # A guild coming (back) into the cache after the start: discord.py reports a join whose GUILD_CREATE says
        # `unavailable: false` as this event, not as a join, so it is checked here too.
        if self.is_ready():
            await self.leave_if_not_allowed(guild)

    async def leave_if_not_allowed(self, guild: discord.Guild) -> bool:
        """Leave `guild` unless ALLOWED_GUILD_IDS allows it (empty: every guild); True if the bot left."""
        if self.deps.settings.guild_allowed(guild.id):
            return False
        log.warning("leaving guild %s (%s): it is not in ALLOWED_GUILD_IDS", guild.id, guild.name)
        try:
            await guild.leave()
        except discord.HTTPException:
            log.exception("could not leave guild %s", guild.id)
            return False
        return True


def _yield_after(poll_event: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
    async def poll_then_yield() -> None:
        await poll_event()
        await asyncio.sleep(0)

    return poll_then_yield


async def sync_commands(bot: commands.Bot, guild_id: int | None) -> list[discord.app_commands.AppCommand]:
    """Sync the command tree: to one guild (instant, for development) or globally (guild_id None)."""
    if guild_id is not None:
        guild = discord.Object(id=guild_id)
        bot.tree.copy_global_to(guild=guild)
        synced = await bot.tree.sync(guild=guild)
        log.info("synced %d commands to guild %s", len(synced), guild_id)
    else:
        synced = await bot.tree.sync()
        log.info("synced %d global commands (they may take a while to show up everywhere)", len(synced))
    return synced
