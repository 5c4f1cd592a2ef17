"""Serving the gallery from the bot's own event loop: `GalleryServer` (uvicorn) and what discord.py's cache tells it.

uvicorn runs as a task of the bot's loop (`uvicorn.Server.serve`), on a socket bound here first, so a port already
in use is a clear error at start (`GalleryError`) rather than uvicorn's `sys.exit`. The bot keeps its own signal
handling (uvicorn's is switched off: Ctrl-C and SIGTERM stop the bot, whose `close` stops the gallery); uvicorn's
logging setup, access log, `server:` header and proxy headers are off (the bot's log format stays; nothing reads
the client's address). At most MAX_CONNECTIONS connections are served at once (uvicorn answers 503 beyond), idle
keep-alive connections close after KEEP_ALIVE seconds, and a request's headers are bounded by h11 (16 KiB).

The sweep of stale thumbnails (bot.gallery.thumbs) runs at start and every SWEEP_SECONDS while the server runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import socket
from collections.abc import Callable, Generator
from typing import Any

import discord
import uvicorn

from bot.gallery.thumbs import SWEEP_SECONDS

log = logging.getLogger(__name__)

#: Connections served at once; more are answered 503.
MAX_CONNECTIONS = 64
#: Seconds an idle keep-alive connection stays open.
KEEP_ALIVE = 5
#: Seconds `stop` waits for requests in flight before it cancels them.
GRACEFUL_SECONDS = 5
#: Seconds `start` waits for the server to listen.
START_SECONDS = 10


def _detached_task(coro: Any, name: str) -> asyncio.Task[Any]:
    """A task made from an empty contextvars.Context: it carries nothing of the code that starts it."""
    return contextvars.Context().run(asyncio.get_running_loop().create_task, coro, name=name)


class GalleryError(RuntimeError):
    """The gallery could not start (its address is taken or can not be bound)."""


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its signal handlers: the bot owns SIGINT and SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    def install_signal_handlers(self) -> None:  # older uvicorn versions call this instead
        return None


def public_channel_check(client: discord.Client) -> Callable[[int, int], bool]:
    """`channel_is_public(guild_id, channel_id)` from discord.py's cache: the guild and channel are known to the
    bot, and @everyone (the guild's default role) may view the channel and read its history. Age-restricted (NSFW)
    channels and private threads are never public: the web has no age gate nor thread membership."""

    def channel_is_public(guild_id: int, channel_id: int) -> bool:
        guild = client.get_guild(guild_id)
        if guild is None:
            return False
        channel = guild.get_channel_or_thread(channel_id)
        if channel is None or isinstance(channel, discord.CategoryChannel):
            return False
        if isinstance(channel, discord.Thread) and (channel.is_private() or channel.parent is None):
            return False
        is_nsfw = getattr(channel, "is_nsfw", None)
        if is_nsfw is not None and is_nsfw():
            return False
        perms = channel.permissions_for(guild.default_role)
        return bool(perms.view_channel and perms.read_message_history)

    return channel_is_public


def member_names(client: discord.Client) -> Callable[[int, int], str | None]:
    """`member_name(guild_id, user_id)`: the member's display name when discord.py has them cached, else None."""

    def member_name(guild_id: int, user_id: int) -> str | None:
        guild = client.get_guild(guild_id)
        user = (guild.get_member(user_id) if guild is not None else None) or client.get_user(user_id)
        return user.display_name if user is not None else None

    return member_name


class GalleryServer:
    """The gallery's uvicorn server as a task of the running event loop: `await start()`, `await stop()`."""

    def __init__(self, app: Any, host: str, port: int, *, public_url: str | None = None):
        self.app = app
        self.host = host
        self.requested_port = port
        self.public_url = public_url
        self.server: _EmbeddedServer | None = None
        self._task: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._socket: socket.socket | None = None
        self._port = port

    @property
    def port(self) -> int:
        """The port it listens on (the one the system picked for GALLERY_PORT=0)."""
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def _listen(self) -> socket.socket:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                self.host, self.requested_port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        except OSError as exc:
            raise GalleryError(f"GALLERY_HOST {self.host!r} is not an address this machine can listen on: "
                               f"{exc.strerror or exc}") from exc
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(128)
        except OSError as exc:
            sock.close()
            raise GalleryError(f"the gallery can not listen on {self.host}:{self.requested_port} (GALLERY_HOST, "
                               f"GALLERY_PORT): {exc.strerror or exc}") from exc
        sock.setblocking(False)
        return sock

    async def start(self) -> None:
        """Bind the address and start serving; returns once the server accepts connections."""
        if self._task is not None:
            return
        self._socket = await self._listen()
        self._port = self._socket.getsockname()[1]
        config = uvicorn.Config(
            self.app, lifespan="off", log_config=None, access_log=False, server_header=False, proxy_headers=False,
            http="h11", ws="none", limit_concurrency=MAX_CONNECTIONS, timeout_keep_alive=KEEP_ALIVE,
            timeout_graceful_shutdown=GRACEFUL_SECONDS,
        )
        self.server = _EmbeddedServer(config)
        # uvicorn's own INFO lines ("Started server process", "Shutting down") say nothing the gallery's do not.
        uvicorn_log = logging.getLogger("uvicorn.error")
        if uvicorn_log.level == logging.NOTSET:
            uvicorn_log.setLevel(logging.WARNING)
        # The server is a service beside the bot, not a piece of the work that starts it: its task (and so its
        # requests) begins from an empty contextvars.Context, carrying nothing of the caller's context (discord.py's
        # setup hook; the simcord harness, which would otherwise count uvicorn's ever-polling main loop as the
        # bot's own work and wait for it to settle).
        self._task = _detached_task(self.server.serve(sockets=[self._socket]), "gallery")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_SECONDS
        while not self.server.started:
            if self._task.done():
                task, self._task = self._task, None
                self._socket.close()
                task.result()  # raises what stopped it
                raise GalleryError("the gallery stopped while it was starting")
            if loop.time() > deadline:
                await self.stop()
                raise GalleryError(f"the gallery did not start within {START_SECONDS} s")
            await asyncio.sleep(0.01)
        thumbs = getattr(self.app.state, "thumbs", None)
        catalog = getattr(self.app.state, "catalog", None)
        if thumbs is not None and catalog is not None:
            self._sweeper = _detached_task(self._sweep_forever(thumbs, catalog), "gallery-thumb-sweep")
        shown = f"; public address {self.public_url}" if self.public_url else ""
        log.info("gallery serving on %s%s", self.url, shown)

    async def _sweep_forever(self, thumbs: Any, catalog: Any) -> None:
        while True:
            try:
                await thumbs.sweep(catalog.thumbnail_keys)
            except Exception:  # noqa: BLE001 - the next sweep tries again
                log.warning("gallery: the thumbnail sweep failed", exc_info=True)
            await asyncio.sleep(SWEEP_SECONDS)

    async def stop(self) -> None:
        """Stop accepting connections, finish (or after GRACEFUL_SECONDS cancel) requests in flight, and return."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        if self._task is None:
            return
        assert self.server is not None
        self.server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(self._task), GRACEFUL_SECONDS + 5)
        except TimeoutError:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        except Exception:  # noqa: BLE001 - stopping goes on whatever the server's task ended with
            log.warning("gallery: the server ended with an error", exc_info=True)
        finally:
            self._task = None
            if self._socket is not None:
                self._socket.close()
            log.info("gallery stopped")


async def start_gallery(bot: Any) -> GalleryServer:
    """The gallery of a running bot (GALLERY_PORT set): the app over its services, public channels and member names
    from its cache, served by its event loop."""
    from bot.gallery.web import create_app

    settings = bot.deps.settings
    app = create_app(bot.deps.services, settings, public_channel_check(bot), member_name=member_names(bot))
    server = GalleryServer(app, settings.gallery_host, settings.gallery_port, public_url=settings.gallery_public_url)
    await server.start()
    return server
