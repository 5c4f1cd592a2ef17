"""A small Discord-compatible HTTP + gateway server for end-to-end tests.

It implements only what a discord.py 2.x bot needs: login, the JSON gateway (HELLO, IDENTIFY, READY, GUILD_CREATE,
INTERACTION_CREATE, heartbeats), interaction callbacks, webhook follow-ups and edits, channel messages with
multipart attachments, message edits and deletes, and application command sync. One guild, plain text channels.

Everything the bot sends is recorded (`calls`), messages are kept with their attachments (`messages`), and the
server computes who a message would have pinged the way Discord does, so a test can assert that nobody was.

Responses carry `Content-Type: application/json` exactly: discord.py parses a body as JSON only then.

Faults can be injected for the hardening tests: `inject(method, path_regex, status, body, count=…)` answers matching
requests with an error (optionally after doing the work, as when Discord's answer is lost), `rate_limit(…)` answers
429 with `retry_after` the way Discord does, and `upload_limit` refuses larger uploads with 413. Message creation
honours `nonce` + `enforce_nonce` like Discord: a second message with the same nonce returns the first one, for
`NONCE_WINDOW` seconds or until `forget_nonces()` (Discord's "past few minutes" gone by). A channel's history
(`GET /channels/{id}/messages` with `limit`, `before`, `after`, `around`) lists its messages newest first.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import WSMsgType, web

DISCORD_EPOCH_MS = 1420070400000
ADMINISTRATOR = 1 << 3
MANAGE_GUILD = 1 << 5
# View channel, send messages, embed links, attach files, read history, use application commands.
MEMBER_PERMISSIONS = (1 << 10) | (1 << 11) | (1 << 14) | (1 << 15) | (1 << 16) | (1 << 31)
EPHEMERAL = 1 << 6
#: Seconds Discord gives a bot to acknowledge an interaction.
ACK_DEADLINE = 3.0

# Interaction callback types.
PONG, MESSAGE, DEFERRED_MESSAGE, DEFERRED_UPDATE, UPDATE_MESSAGE, AUTOCOMPLETE_RESULT, MODAL = 1, 4, 5, 6, 7, 8, 9

_USER_MENTION = re.compile(r"<@!?(\d+)>")
_ROLE_MENTION = re.compile(r"<@&(\d+)>")


def _now_iso() -> str:
    return datetime.now(UTC).isoformat()


def json_response(data: Any, status: int = 200) -> web.Response:
    """A JSON response whose Content-Type has no charset suffix (discord.py compares it exactly)."""
    body = json.dumps(data).encode()
    return web.Response(body=body, status=status, headers={"Content-Type": "application/json"})


@dataclass
class Call:
    """One HTTP request the bot made."""

    method: str
    path: str
    query: dict[str, str]
    json: Any
    files: list[tuple[str, bytes]] = field(default_factory=list)


@dataclass
class Fault:
    """An error the fake answers instead of (or after) doing what a request asks. See `FakeDiscord.inject`."""

    method: str
    path: str
    status: int
    body: dict[str, Any]
    count: int | None = 1
    apply: bool = False
    headers: dict[str, str] = field(default_factory=dict)
    when: Callable[[Call], bool] | None = None
    hits: int = 0

    def matches(self, call: Call) -> bool:
        if self.count is not None and self.hits >= self.count:
            return False
        if self.method not in ("*", call.method):
            return False
        if not re.search(self.path, call.path):
            return False
        return self.when is None or bool(self.when(call))

    @property
    def spent(self) -> bool:
        return self.count is not None and self.hits >= self.count


#: Discord's JSON error codes used by the fault helpers.
UNKNOWN_INTERACTION = 10062
INVALID_WEBHOOK_TOKEN = 50027
ENTITY_TOO_LARGE = 40005
#: Seconds Discord remembers a message nonce (`enforce_nonce`): "the past few minutes".
NONCE_WINDOW = 300.0


@dataclass
class InteractionRecord:
    """One interaction the server sent, and what the bot answered."""

    id: str
    token: str
    type: int
    user_id: str
    channel_id: str
    payload: dict[str, Any]
    callbacks: list[dict[str, Any]] = field(default_factory=list)
    original_id: str | None = None
    followup_ids: list[str] = field(default_factory=list)
    autocomplete: list[dict[str, Any]] | None = None
    modal: dict[str, Any] | None = None
    #: When the server sent the interaction, and how long the bot took to acknowledge it (seconds).
    sent_at: float = field(default_factory=time.monotonic)
    ack_delay: float | None = None

    @property
    def callback_types(self) -> list[int]:
        return [c["type"] for c in self.callbacks]


class FakeDiscord:
    """One fake Discord with one guild. Use `async with FakeDiscord() as fd:`."""

    def __init__(self, *, token: str | None = None, host: str = "127.0.0.1"):
        self.token = token or "fake." + secrets.token_urlsafe(24)
        self.host = host
        self._ids = itertools.count(1)
        self.app_id = self.snowflake()
        self.bot_user = self._user_payload(self.app_id, "imaginebot", bot=True)
        self.guild_id = self.snowflake()
        self.roles: dict[str, dict[str, Any]] = {
            self.guild_id: self._role(self.guild_id, "@everyone", MEMBER_PERMISSIONS),
        }
        self.users: dict[str, dict[str, Any]] = {}
        self.members: dict[str, dict[str, Any]] = {}
        self.channels: dict[str, dict[str, Any]] = {}
        self.messages: dict[str, dict[str, Any]] = {}
        self.deleted: dict[str, dict[str, Any]] = {}
        self.files: dict[str, tuple[str, bytes]] = {}
        self.calls: list[Call] = []
        self.unhandled: list[str] = []
        self.late_acks: list[InteractionRecord] = []
        self.interactions: dict[str, InteractionRecord] = {}
        self.commands: dict[str, list[dict[str, Any]]] = {}
        self.identified = 0
        #: Injected faults, first match wins (see `inject`).
        self.faults: list[Fault] = []
        #: Largest upload (sum of file sizes, bytes) accepted; larger ones get 413. None: no limit.
        self.upload_limit: int | None = None
        #: Requests answered with an injected fault or the upload limit, as (Call, status).
        self.faulted: list[tuple[Call, int]] = []
        self._nonces: dict[tuple[str, str], tuple[str, float]] = {}
        self._sockets: list[web.WebSocketResponse] = []
        self._seq = 0
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.port = 0
        self._add_member(self.bot_user, [])
        self.owner = self.add_user("owner")

    # --- lifecycle ------------------------------------------------------------------------------------------
    async def __aenter__(self) -> FakeDiscord:
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/gateway", self._gateway)
        app.router.add_get("/attachments/{att_id}/{filename}", self._attachment)
        app.router.add_route("*", "/api/v{version}/{tail:.*}", self._api)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        for ws in list(self._sockets):
            with contextlib.suppress(Exception):
                await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def api_base(self) -> str:
        return f"http://{self.host}:{self.port}/api/v10"

    @property
    def gateway_url(self) -> str:
        return f"ws://{self.host}:{self.port}/gateway"

    # --- world building -------------------------------------------------------------------------------------
    def snowflake(self) -> str:
        ms = int(time.time() * 1000) - DISCORD_EPOCH_MS
        return str((ms << 22) | (next(self._ids) & 0x3FFFFF))

    @staticmethod
    def _user_payload(user_id: str, name: str, *, bot: bool = False) -> dict[str, Any]:
        return {
            "id": user_id,
            "username": name,
            "global_name": name,
            "discriminator": "0",
            "avatar": None,
            "bot": bot,
            "system": False,
            "public_flags": 0,
            "flags": 0,
        }

    @staticmethod
    def _role(role_id: str, name: str, permissions: int) -> dict[str, Any]:
        return {
            "id": role_id,
            "name": name,
            "permissions": str(permissions),
            "position": 0 if name == "@everyone" else 1,
            "color": 0,
            "hoist": False,
            "managed": False,
            "mentionable": False,
            "flags": 0,
            "icon": None,
            "unicode_emoji": None,
        }

    def add_user(self, name: str, *, moderator: bool = False) -> dict[str, Any]:
        """Create a guild member; a moderator gets a role with Manage Server."""
        user = self._user_payload(self.snowflake(), name)
        roles = []
        if moderator:
            role_id = self.snowflake()
            self.roles[role_id] = self._role(role_id, "moderator", MEMBER_PERMISSIONS | MANAGE_GUILD)
            roles.append(role_id)
        self._add_member(user, roles)
        return user

    def _add_member(self, user: dict[str, Any], roles: list[str]) -> None:
        self.users[user["id"]] = user
        self.members[user["id"]] = {
            "user": user,
            "roles": roles,
            "nick": None,
            "avatar": None,
            "joined_at": _now_iso(),
            "premium_since": None,
            "deaf": False,
            "mute": False,
            "pending": False,
            "flags": 0,
            "communication_disabled_until": None,
        }

    def add_channel(self, name: str) -> dict[str, Any]:
        channel = {
            "id": self.snowflake(),
            "type": 0,
            "guild_id": self.guild_id,
            "name": name,
            "position": len(self.channels),
            "permission_overwrites": [],
            "parent_id": None,
            "topic": None,
            "nsfw": False,
            "rate_limit_per_user": 0,
            "last_message_id": None,
        }
        self.channels[channel["id"]] = channel
        return channel

    def permissions_of(self, user_id: str) -> int:
        if user_id == self.owner["id"]:
            return (1 << 53) - 1
        perms = int(self.roles[self.guild_id]["permissions"])
        for role_id in self.members[user_id]["roles"]:
            perms |= int(self.roles[role_id]["permissions"])
        return perms

    def _guild_payload(self) -> dict[str, Any]:
        return {
            "id": self.guild_id,
            "name": "Fake Guild",
            "owner_id": self.owner["id"],
            "icon": None,
            "splash": None,
            "discovery_splash": None,
            "banner": None,
            "description": None,
            "afk_channel_id": None,
            "afk_timeout": 300,
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "mfa_level": 0,
            "premium_tier": 0,
            "premium_subscription_count": 0,
            "preferred_locale": "en-US",
            "system_channel_id": None,
            "system_channel_flags": 0,
            "rules_channel_id": None,
            "public_updates_channel_id": None,
            "vanity_url_code": None,
            "application_id": None,
            "features": [],
            "emojis": [],
            "stickers": [],
            "roles": list(self.roles.values()),
            "member_count": len(self.members),
            "large": False,
            "unavailable": False,
            "joined_at": _now_iso(),
            "members": list(self.members.values()),
            "channels": list(self.channels.values()),
            "threads": [],
            "presences": [],
            "voice_states": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [],
            "premium_progress_bar_enabled": False,
        }

    # --- waiting ------------------------------------------------------------------------------------------
    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def wait_for(self, predicate: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
        """Wait until `predicate()` returns something truthy and return it."""
        async def loop() -> Any:
            async with self._changed:
                while True:
                    value = predicate()
                    if value:
                        return value
                    await self._changed.wait()

        try:
            return await asyncio.wait_for(loop(), timeout)
        except TimeoutError:
            raise AssertionError(f"fake Discord: timed out after {timeout:g}s waiting for {what}") from None

    async def wait_until_ready(self, timeout: float = 30.0) -> None:
        await self.wait_for(lambda: self.identified > 0 and self._sockets, timeout, "the bot to identify")

    # --- faults -------------------------------------------------------------------------------------------
    def inject(self, method: str, path: str, status: int, body: dict[str, Any] | None = None, *, count: int | None = 1,
               apply: bool = False, headers: dict[str, str] | None = None,
               when: Callable[[Call], bool] | None = None) -> Fault:
        """Answer the next `count` requests (None: all) whose method is `method` ("*" for any) and whose path (after
        /api/v10, e.g. `/channels/1/messages`) matches the regex `path` with `status` and `body`. With `apply` the
        request is carried out first and only the answer is an error (Discord did it, the bot never heard)."""
        fault = Fault(method, path, status, body if body is not None else {"message": f"{status}: injected", "code": 0},
                      count, apply, dict(headers or {}), when)
        self.faults.append(fault)
        return fault

    def rate_limit(self, method: str, path: str, retry_after: float = 0.25, *, count: int | None = 1,
                   is_global: bool = False) -> Fault:
        """429 as Discord sends it (JSON body with `retry_after`, a `Via` header, rate-limit headers)."""
        headers = {
            "Via": "1.1 google",
            "Retry-After": str(max(1, round(retry_after))),
            "X-RateLimit-Limit": "5",
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset-After": f"{retry_after:.3f}",
            "X-RateLimit-Scope": "global" if is_global else "user",
        }
        body = {"message": "You are being rate limited.", "retry_after": retry_after, "global": is_global}
        return self.inject(method, path, 429, body, count=count, headers=headers)

    def forget_nonces(self) -> None:
        """Forget every message nonce, as Discord does a few minutes after a post: a repeated post with the same
        nonce then makes a second message."""
        self._nonces.clear()

    def clear_faults(self) -> None:
        self.faults.clear()
        self.upload_limit = None

    def _fault_for(self, call: Call) -> Fault | None:
        for fault in self.faults:
            if fault.matches(call):
                fault.hits += 1
                return fault
        return None

    def _fault_response(self, call: Call, fault: Fault) -> web.Response:
        self.faulted.append((call, fault.status))
        body = json.dumps(fault.body).encode()
        return web.Response(body=body, status=fault.status, headers={"Content-Type": "application/json", **fault.headers})

    # --- gateway ------------------------------------------------------------------------------------------
    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        await ws.send_str(json.dumps({"op": 10, "d": {"heartbeat_interval": 41250}}))
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                data = json.loads(msg.data)
                op = data.get("op")
                if op == 1:
                    await ws.send_str(json.dumps({"op": 11}))
                elif op == 2:
                    await self._identify(ws, data["d"])
                elif op == 6:  # resume: we keep no sessions, so ask for a new identify
                    await ws.send_str(json.dumps({"op": 9, "d": False}))
        finally:
            if ws in self._sockets:
                self._sockets.remove(ws)
        return ws

    async def _identify(self, ws: web.WebSocketResponse, data: dict[str, Any]) -> None:
        if data.get("token") != self.token:
            await ws.close(code=4004, message=b"Authentication failed.")
            return
        self._sockets = [ws]  # one bot connection at a time: the newest one
        self.identified += 1
        ready = {
            "v": 10,
            "user": self.bot_user,
            "guilds": [{"id": self.guild_id, "unavailable": True}],
            "session_id": secrets.token_hex(16),
            "resume_gateway_url": self.gateway_url,
            "application": {"id": self.app_id, "flags": 0},
        }
        await self._dispatch("READY", ready)
        await self._dispatch("GUILD_CREATE", self._guild_payload())
        await self._notify()

    async def invalidate_session(self) -> None:
        """Tell the connected bot its session is invalid: it has to reconnect and IDENTIFY again."""
        await self._sockets[-1].send_str(json.dumps({"op": 9, "d": False}))

    def command_syncs(self) -> list[Call]:
        """Every PUT of the command list (global or guild)."""
        return [c for c in self.calls if c.method == "PUT" and c.path.endswith("/commands")]

    async def _dispatch(self, event: str, data: dict[str, Any]) -> None:
        if not self._sockets:
            raise AssertionError(f"fake Discord: no bot connected to receive {event}")
        self._seq += 1
        await self._sockets[-1].send_str(json.dumps({"op": 0, "s": self._seq, "t": event, "d": data}))

    # --- interactions from a member -----------------------------------------------------------------------
    def _interaction(self, type_: int, user: dict[str, Any], channel: dict[str, Any], data: dict[str, Any], **extra: Any) -> InteractionRecord:
        iid = self.snowflake()
        token = "itoken-" + secrets.token_hex(12)
        member = {**self.members[user["id"]], "permissions": str(self.permissions_of(user["id"]))}
        payload = {
            "id": iid,
            "application_id": self.app_id,
            "type": type_,
            "token": token,
            "version": 1,
            "data": data,
            "guild_id": self.guild_id,
            "channel_id": channel["id"],
            "channel": channel,
            "member": member,
            "locale": "en-US",
            "guild_locale": "en-US",
            "app_permissions": str((1 << 53) - 1),
            "entitlements": [],
            "authorizing_integration_owners": {"0": self.guild_id},
            "context": 0,
            "attachment_size_limit": extra.pop("attachment_size_limit", 10 * 1024 * 1024),
            **extra,
        }
        record = InteractionRecord(iid, token, type_, user["id"], channel["id"], payload)
        self.interactions[iid] = record
        return record

    def find_command(self, name: str) -> dict[str, Any]:
        for scope in (self.guild_id, "global"):
            for command in self.commands.get(scope, []):
                if command["name"] == name:
                    return command
        raise AssertionError(f"fake Discord: command /{name} was never synced (synced: {self.command_names()})")

    def command_names(self) -> list[str]:
        return sorted({c["name"] for cmds in self.commands.values() for c in cmds})

    def _build_options(self, spec: dict[str, Any], path: list[str], values: dict[str, Any], resolved: dict[str, Any]) -> list[dict[str, Any]]:
        if path:
            child = next((o for o in spec.get("options", []) if o["name"] == path[0] and o["type"] in (1, 2)), None)
            if child is None:
                raise AssertionError(f"fake Discord: no sub-command {path[0]!r} in {spec['name']!r}")
            return [{"name": child["name"], "type": child["type"], "options": self._build_options(child, path[1:], values, resolved)}]
        declared = {o["name"]: o for o in spec.get("options", [])}
        options = []
        for name, value in values.items():
            if name not in declared:
                raise AssertionError(f"fake Discord: option {name!r} is not declared on {spec['name']!r}")
            kind = declared[name]["type"]
            if kind == 6:  # user: send the id, with the user and member in `resolved`
                user = value
                value = user["id"]
                resolved.setdefault("users", {})[user["id"]] = user
                if user["id"] in self.members:
                    member = {k: v for k, v in self.members[user["id"]].items() if k != "user"}
                    resolved.setdefault("members", {})[user["id"]] = {**member, "permissions": str(self.permissions_of(user["id"]))}
            elif kind == 7:  # channel
                channel = value
                value = channel["id"]
                resolved.setdefault("channels", {})[channel["id"]] = {**channel, "permissions": str((1 << 53) - 1)}
            elif kind == 11:  # attachment: (filename, bytes), uploaded and resolved like Discord does
                filename, data = value
                att_id = self.snowflake()
                self.files[att_id] = (filename, bytes(data))
                url = f"http://{self.host}:{self.port}/attachments/{att_id}/{filename}"
                resolved.setdefault("attachments", {})[att_id] = {
                    "id": att_id, "filename": filename, "size": len(data), "url": url, "proxy_url": url,
                    "content_type": _content_type(filename)}
                value = att_id
            options.append({"name": name, "type": kind, "value": value})
        return options

    async def slash(self, user: dict[str, Any], channel: dict[str, Any], command: str, **options: Any) -> InteractionRecord:
        """A member runs `/command sub options…`; returns at once (use `wait_for` for the answer)."""
        words = command.split()
        spec = self.find_command(words[0])
        resolved: dict[str, Any] = {}
        data = {
            "id": spec["id"],
            "name": spec["name"],
            "type": 1,
            "options": self._build_options(spec, words[1:], options, resolved),
        }
        if spec.get("guild_id"):
            data["guild_id"] = spec["guild_id"]
        if resolved:
            data["resolved"] = resolved
        record = self._interaction(2, user, channel, data)
        await self._dispatch("INTERACTION_CREATE", record.payload)
        return record

    async def autocomplete(self, user: dict[str, Any], channel: dict[str, Any], command: str, focused: str,
                           **options: Any) -> InteractionRecord:
        """A member types in option `focused` of `/command` (its current text in `options[focused]`, "" if left
        out); the bot's suggestions arrive in `record.autocomplete`."""
        words = command.split()
        spec = self.find_command(words[0])
        built = self._build_options(spec, words[1:], {focused: "", **options}, {})
        leaf = built
        while leaf and "options" in leaf[0]:
            leaf = leaf[0]["options"]
        for option in leaf:
            if option["name"] == focused:
                option["focused"] = True
        data = {"id": spec["id"], "name": spec["name"], "type": 1, "options": built}
        if spec.get("guild_id"):
            data["guild_id"] = spec["guild_id"]
        record = self._interaction(4, user, channel, data)
        await self._dispatch("INTERACTION_CREATE", record.payload)
        return record

    async def click(self, user: dict[str, Any], message: dict[str, Any], custom_id: str) -> InteractionRecord:
        """A member clicks the button with `custom_id` on `message`."""
        ids = [c.get("custom_id") for row in message.get("components", []) for c in row.get("components", [])]
        if custom_id not in ids:
            raise AssertionError(f"fake Discord: no button {custom_id!r} on message {message['id']} (has {ids})")
        channel = self.channels[message["channel_id"]]
        record = self._interaction(3, user, channel, {"custom_id": custom_id, "component_type": 2}, message=message)
        await self._dispatch("INTERACTION_CREATE", record.payload)
        return record

    async def select(self, user: dict[str, Any], message: dict[str, Any], custom_id: str, values: list[str]) -> InteractionRecord:
        """A member picks `values` in the select menu with `custom_id` on `message`."""
        ids = [c.get("custom_id") for row in message.get("components", []) for c in row.get("components", [])]
        if custom_id not in ids:
            raise AssertionError(f"fake Discord: no menu {custom_id!r} on message {message['id']} (has {ids})")
        channel = self.channels[message["channel_id"]]
        record = self._interaction(3, user, channel, {"custom_id": custom_id, "component_type": 3, "values": list(values)},
                                   message=message)
        await self._dispatch("INTERACTION_CREATE", record.payload)
        return record

    async def submit_modal(self, user: dict[str, Any], shown: InteractionRecord, values: dict[str, str]) -> InteractionRecord:
        """Submit the modal the bot showed in answer to `shown`, with text input values by custom_id."""
        assert shown.modal is not None, "fake Discord: that interaction showed no modal"
        rows = []
        for row in shown.modal.get("components", []):
            if row.get("type") == 18:  # label wrapping one component
                inner = row["component"]
                rows.append({"type": 18, "component": {"type": inner["type"], "custom_id": inner["custom_id"], "value": values.get(inner["custom_id"], inner.get("value", ""))}})
            else:
                children = [{"type": c["type"], "custom_id": c["custom_id"], "value": values.get(c["custom_id"], c.get("value", ""))} for c in row.get("components", [])]
                rows.append({"type": 1, "components": children})
        channel = self.channels[shown.channel_id]
        extra = {}
        if "message" in shown.payload:
            extra["message"] = self.messages.get(shown.payload["message"]["id"], shown.payload["message"])
        record = self._interaction(5, user, channel, {"custom_id": shown.modal["custom_id"], "components": rows}, **extra)
        await self._dispatch("INTERACTION_CREATE", record.payload)
        return record

    # --- reading results ----------------------------------------------------------------------------------
    def channel_messages(self, channel_id: str) -> list[dict[str, Any]]:
        """Messages in a channel in order (ephemeral ones excluded)."""
        return [m for m in self.messages.values() if m["channel_id"] == channel_id and not m["flags"] & EPHEMERAL]

    def file_bytes(self, attachment: dict[str, Any]) -> bytes:
        return self.files[attachment["id"]][1]

    def message_calls(self) -> list[Call]:
        """Every request that created or edited a message."""
        return [c for c in self.calls if c.method in ("POST", "PATCH") and isinstance(c.json, dict) and ("content" in c.json or "embeds" in c.json or "data" in c.json)]

    def pinged(self) -> list[dict[str, Any]]:
        """Messages that pinged anyone (everyone/here, a user or a role)."""
        return [m for m in list(self.messages.values()) + list(self.deleted.values()) if m["mention_everyone"] or m["mentions"] or m["mention_roles"]]

    # --- HTTP API -----------------------------------------------------------------------------------------
    async def _read_body(self, request: web.Request) -> tuple[Any, list[tuple[str, bytes]]]:
        if request.content_type.startswith("multipart/"):
            payload: Any = None
            files: list[tuple[str, bytes]] = []
            reader = await request.multipart()
            async for part in reader:
                data = await part.read()
                if part.name == "payload_json":
                    payload = json.loads(data)
                else:
                    files.append((part.filename or part.name or "file", bytes(data)))
            return payload, files
        raw = await request.read()
        return (json.loads(raw) if raw else None), []

    async def _api(self, request: web.Request) -> web.StreamResponse:
        auth = request.headers.get("Authorization", "")
        path = "/" + request.match_info["tail"]
        body, files = await self._read_body(request)
        call = Call(request.method, path, dict(request.query), body, files)
        self.calls.append(call)
        parts = path.strip("/").split("/")
        needs_bot_auth = parts[0] not in ("interactions", "webhooks")
        if needs_bot_auth and auth != f"Bot {self.token}":
            return json_response({"message": "401: Unauthorized", "code": 0}, 401)
        if self.upload_limit is not None and files and sum(len(d) for _, d in files) > self.upload_limit:
            self.faulted.append((call, 413))
            await self._notify()
            return json_response({"message": "Request entity too large", "code": ENTITY_TOO_LARGE}, 413)
        fault = self._fault_for(call)
        if fault is not None and not fault.apply:
            await self._notify()
            return self._fault_response(call, fault)
        try:
            response = await self._route(request.method, parts, body, files, request.query)
        except _NotFound as exc:
            await self._notify()
            return json_response({"message": f"Unknown {exc}", "code": exc.code}, 404)
        await self._notify()
        if fault is not None:
            return self._fault_response(call, fault)
        if response is None:
            self.unhandled.append(f"{request.method} {path}")
            return json_response({"message": "404: Not Found", "code": 0}, 404)
        return response

    async def _route(self, method: str, p: list[str], body: Any, files: list[tuple[str, bytes]], query: Any) -> web.StreamResponse | None:
        n = len(p)
        if method == "GET" and p == ["users", "@me"]:
            return json_response(self.bot_user)
        if method == "GET" and p == ["oauth2", "applications", "@me"]:
            return json_response(self._application())
        if method == "GET" and p == ["gateway", "bot"]:
            return json_response({"url": self.gateway_url, "shards": 1, "session_start_limit": {"total": 1000, "remaining": 1000, "reset_after": 0, "max_concurrency": 1}})
        if p[0] == "applications" and p[-1] == "commands" and method in ("PUT", "GET"):
            scope = p[3] if n == 5 and p[2] == "guilds" else "global"
            if method == "PUT":
                self.commands[scope] = [self._command(c, scope) for c in body]
            return json_response(self.commands.get(scope, []))
        if p[0] == "interactions" and n == 4 and p[3] == "callback" and method == "POST":
            return self._callback(p[1], p[2], body, files)
        if p[0] == "webhooks" and n >= 3:
            return self._webhook(method, p, body, files)
        if p[0] == "channels" and n == 2 and method == "GET":
            if p[1] not in self.channels:
                raise _NotFound("Channel", 10003)
            return json_response(self.channels[p[1]])
        if p[0] == "channels" and n >= 3 and p[2] == "messages":
            channel_id = p[1]
            if channel_id not in self.channels:
                raise _NotFound("Channel", 10003)
            if n == 3 and method == "GET":
                return json_response(self._history(channel_id, query))
            if n == 3 and method == "POST":
                body = body or {}
                nonce = body.get("nonce")
                if nonce is not None and body.get("enforce_nonce"):
                    seen = self._nonces.get((channel_id, str(nonce)))
                    if seen is not None and time.monotonic() - seen[1] < NONCE_WINDOW and seen[0] in self.messages:
                        return json_response(self.messages[seen[0]])  # Discord returns the first message again
                message = self._create_message(channel_id, body, files)
                if nonce is not None:
                    message["nonce"] = str(nonce)
                    self._nonces[(channel_id, str(nonce))] = (message["id"], time.monotonic())
                return json_response(message)
            if n == 4:
                return self._message_op(method, p[3], body, files)
        return None

    def _history(self, channel_id: str, query: Any) -> list[dict[str, Any]]:
        """A channel's messages newest first, as Discord's GET /channels/{id}/messages (limit 1-100, default 50;
        `before`, `after` or `around` a message id); ephemeral messages are not in a channel's history."""
        try:
            limit = int(query.get("limit", 50))
        except ValueError:
            limit = 50
        limit = max(1, min(100, limit))
        listed = sorted((m for m in self.channel_messages(channel_id)), key=lambda m: int(m["id"]), reverse=True)
        if "before" in query:
            listed = [m for m in listed if int(m["id"]) < int(query["before"])]
        elif "after" in query:
            # Discord returns the `limit` messages right after the id, still newest first.
            listed = [m for m in listed if int(m["id"]) > int(query["after"])][-limit:]
        elif "around" in query:
            pivot = int(query["around"])
            older = [m for m in listed if int(m["id"]) <= pivot][: (limit + 1) // 2]
            newer = [m for m in listed if int(m["id"]) > pivot][-(limit // 2):] if limit > 1 else []
            listed = newer + older
        return listed[:limit]

    def _application(self) -> dict[str, Any]:
        return {
            "id": self.app_id,
            "name": "imaginebot",
            "icon": None,
            "description": "",
            "bot_public": True,
            "bot_require_code_grant": False,
            "owner": self.owner,
            "verify_key": "00",
            "flags": 0,
            "team": None,
        }

    def _command(self, spec: dict[str, Any], scope: str) -> dict[str, Any]:
        existing = next((c for c in self.commands.get(scope, []) if c["name"] == spec["name"]), None)
        out = {
            **spec,
            "id": existing["id"] if existing else self.snowflake(),
            "application_id": self.app_id,
            "version": self.snowflake(),
            "default_member_permissions": spec.get("default_member_permissions"),
            "type": spec.get("type", 1),
            "description": spec.get("description", ""),  # context menus have none; Discord answers ""
        }
        if scope != "global":
            out["guild_id"] = scope
        return out

    def _interaction_by_token(self, token: str) -> InteractionRecord:
        for record in self.interactions.values():
            if record.token == token:
                return record
        raise _NotFound("Webhook", 10015)

    def _callback(self, iid: str, token: str, body: dict[str, Any], files: list[tuple[str, bytes]]) -> web.Response:
        record = self.interactions.get(iid)
        if record is None or record.token != token:
            raise _NotFound("interaction", UNKNOWN_INTERACTION)
        if record.callbacks:
            return json_response({"message": "Interaction has already been acknowledged.", "code": 40060}, 400)
        record.ack_delay = time.monotonic() - record.sent_at
        if record.ack_delay > ACK_DEADLINE:  # Discord forgets an interaction not answered within 3 seconds
            self.late_acks.append(record)
            raise _NotFound("interaction", UNKNOWN_INTERACTION)
        record.callbacks.append(body)
        kind = body["type"]
        data = body.get("data") or {}
        response: dict[str, Any] = {"type": kind}
        interaction = {"id": iid, "type": record.type}
        if kind in (MESSAGE, DEFERRED_MESSAGE):
            loading = kind == DEFERRED_MESSAGE
            message = self._create_message(record.channel_id, data, files, interaction=record, loading=loading)
            record.original_id = message["id"]
            interaction.update(response_message_id=message["id"], response_message_loading=loading, response_message_ephemeral=bool(message["flags"] & EPHEMERAL))
            response["message"] = message
        elif kind == UPDATE_MESSAGE:
            message_id = record.payload["message"]["id"]
            response["message"] = self._edit_message(message_id, data, files)
        elif kind == AUTOCOMPLETE_RESULT:
            record.autocomplete = data.get("choices", [])
        elif kind == MODAL:
            record.modal = data
        return json_response({"interaction": interaction, "resource": response})

    def _webhook(self, method: str, p: list[str], body: Any, files: list[tuple[str, bytes]]) -> web.Response | None:
        # /webhooks/{application_id}/{token}[/messages/{id|@original}]
        record = self._interaction_by_token(p[2])
        if len(p) == 3 and method == "POST":
            message = self._create_message(record.channel_id, body or {}, files, interaction=record)
            record.followup_ids.append(message["id"])
            return json_response(message)
        if len(p) == 5 and p[3] == "messages":
            message_id = record.original_id if p[4] == "@original" else p[4]
            if message_id is None:
                raise _NotFound("Message")
            return self._message_op(method, message_id, body, files)
        return None

    def _message_op(self, method: str, message_id: str, body: Any, files: list[tuple[str, bytes]]) -> web.Response | None:
        if message_id not in self.messages:
            raise _NotFound("Message")
        if method == "GET":
            return json_response(self.messages[message_id])
        if method == "PATCH":
            return json_response(self._edit_message(message_id, body or {}, files))
        if method == "DELETE":
            self.deleted[message_id] = self.messages.pop(message_id)
            return web.Response(status=204)
        return None

    # --- messages -----------------------------------------------------------------------------------------
    def _attachments(self, files: list[tuple[str, bytes]], declared: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
        out = []
        for i, (filename, data) in enumerate(files):
            att_id = self.snowflake()
            meta = next((a for a in declared or [] if str(a.get("id")) == str(i)), {})
            name = meta.get("filename") or filename
            self.files[att_id] = (name, data)
            url = f"http://{self.host}:{self.port}/attachments/{att_id}/{name}"
            out.append({"id": att_id, "filename": name, "size": len(data), "url": url, "proxy_url": url, "content_type": _content_type(name), "description": meta.get("description")})
        return out

    def _mentions(self, content: str, allowed: dict[str, Any] | None) -> tuple[bool, list[dict[str, Any]], list[str]]:
        """Who `content` pings under `allowed_mentions`, as Discord decides it (no allowed_mentions: everything)."""
        parse = ["everyone", "users", "roles"] if allowed is None else allowed.get("parse", [])
        allowed_users = set() if allowed is None else {str(u) for u in allowed.get("users", [])}
        allowed_roles = set() if allowed is None else {str(r) for r in allowed.get("roles", [])}
        everyone = "everyone" in parse and ("@everyone" in content or "@here" in content)
        users = [self.users[u] for u in dict.fromkeys(_USER_MENTION.findall(content)) if u in self.users and ("users" in parse or u in allowed_users)]
        roles = [r for r in dict.fromkeys(_ROLE_MENTION.findall(content)) if r in self.roles and ("roles" in parse or r in allowed_roles)]
        return everyone, users, roles

    def _create_message(self, channel_id: str, data: dict[str, Any], files: list[tuple[str, bytes]], *, interaction: InteractionRecord | None = None, loading: bool = False) -> dict[str, Any]:
        content = data.get("content") or ""
        everyone, users, roles = self._mentions(content, data.get("allowed_mentions"))
        flags = int(data.get("flags") or 0)
        if loading:
            flags |= 1 << 7
        message = {
            "id": self.snowflake(),
            "channel_id": channel_id,
            "guild_id": self.guild_id,
            "author": self.bot_user,
            "content": content,
            "timestamp": _now_iso(),
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": everyone,
            "mentions": users,
            "mention_roles": roles,
            "attachments": self._attachments(files, data.get("attachments")),
            "embeds": data.get("embeds") or [],
            "components": data.get("components") or [],
            "pinned": False,
            "type": 20 if interaction is not None and interaction.type == 2 else 0,
            "flags": flags,
            "allowed_mentions": data.get("allowed_mentions"),
        }
        if interaction is not None:
            message["webhook_id"] = self.app_id
            message["interaction_metadata"] = {"id": interaction.id, "type": interaction.type, "user": self.users[interaction.user_id], "authorizing_integration_owners": {}}
        self.messages[message["id"]] = message
        return message

    def _edit_message(self, message_id: str, data: dict[str, Any], files: list[tuple[str, bytes]]) -> dict[str, Any]:
        message = self.messages[message_id]
        if "content" in data:
            message["content"] = data["content"] or ""
            everyone, users, roles = self._mentions(message["content"], data.get("allowed_mentions"))
            message["mention_everyone"] = message["mention_everyone"] or everyone
            message["mentions"] = message["mentions"] or users
            message["mention_roles"] = message["mention_roles"] or roles
        for key in ("embeds", "components"):
            if key in data:
                message[key] = data[key] or []
        if "flags" in data and data["flags"] is not None:
            message["flags"] = int(data["flags"]) | (message["flags"] & EPHEMERAL)
        message["flags"] &= ~(1 << 7)  # no longer loading
        if "attachments" in data or files:
            declared = data.get("attachments")
            existing = {a["id"]: a for a in message["attachments"]}
            kept = [existing[str(a["id"])] for a in declared or [] if str(a.get("id")) in existing] if declared is not None else message["attachments"]
            message["attachments"] = kept + self._attachments(files, declared)
        message["edited_timestamp"] = _now_iso()
        return message

    async def _attachment(self, request: web.Request) -> web.Response:
        att = self.files.get(request.match_info["att_id"])
        if att is None:
            return web.Response(status=404)
        return web.Response(body=att[1], content_type=_content_type(att[0]))


class _NotFound(Exception):
    """A 404 with Discord's JSON code (10008 Unknown Message unless told)."""

    def __init__(self, what: str, code: int = 10008):
        super().__init__(what)
        self.code = code


def _content_type(name: str) -> str:
    lower = name.lower()
    for ext, kind in ((".png", "image/png"), (".jpg", "image/jpeg"), (".jpeg", "image/jpeg"), (".webp", "image/webp"), (".gif", "image/gif")):
        if lower.endswith(ext):
            return kind
    return "application/octet-stream"


@contextlib.contextmanager
def pointed_at(fd: FakeDiscord) -> Iterator[FakeDiscord]:
    """discord.py's API base and gateway set to `fd` (bot.app.point_at_discord) for the block, then put back: for a
    bot run in this process."""
    import discord

    from bot.app import point_at_discord

    old_base, old_gateway = discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    point_at_discord(fd.api_base, fd.gateway_url)
    try:
        yield fd
    finally:
        discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = old_base, old_gateway
