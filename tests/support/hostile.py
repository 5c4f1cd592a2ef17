"""Shared pieces of the hostile-input and abuse tests: a bot in simcord driven from synchronous hypothesis tests,
raw interactions that skip the client-side checks a hostile client skips, hypothesis strategies for hostile text
and for every option of a command, and the checks every answer of the bot must pass (Discord's limits, no pings,
no crash, nothing charged for a refusal).

    with HostileWorld(tmp_path, migrated_template) as hw:
        outcome = hw.run(hw.slash(hw.w.alice, "imagine", prompt="@everyone"))
        assert not outcome.problems
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import shutil
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import discord
import simcord
import simcord.interactions as sim_interactions
from discord import app_commands
from hypothesis import strategies as st
from simcord import actors as sim_actors
from simcord.enums import ComponentType, InteractionType

from bot.config import Settings
from bot.db import create_engine
from bot.services import Services, build_services
from bot.services.moderation import _CONFUSABLES
from bot.ui.text import (
    BUTTON_LABEL,
    CHOICE_NAME,
    CHOICE_VALUE,
    CHOICES,
    CONTENT,
    CUSTOM_ID,
    EMBED_AUTHOR,
    EMBED_DESCRIPTION,
    EMBED_FIELD_NAME,
    EMBED_FIELD_VALUE,
    EMBED_FIELDS,
    EMBED_FOOTER,
    EMBED_TITLE,
    EMBED_TOTAL,
    MODAL_TITLE,
    TEXT_INPUT_LABEL,
    TEXT_INPUT_VALUE,
)
from tests.bot.exts.conftest import World
from tests.conftest import sqlite_url

#: What the error handler says when a bug reached it (see bot/exts/errors/handler.py).
APOLOGY = "something went wrong on our side"
#: Discord's integer options carry at most 2**53 in magnitude (Discord refuses more).
INT_LIMIT = 2**53

@contextlib.asynccontextmanager
async def open_test_services(tmp_path: Path, template: Path, *, clock: Any = None, **settings: Any
                             ) -> AsyncIterator[tuple[Settings, Services]]:
    """Settings and services over a copy of the migrated template database under `tmp_path/data`."""
    data = tmp_path / "data"
    data.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template, data / "bot.db")
    s = Settings(_env_file=None, data_dir=data, database_url=sqlite_url(data / "bot.db"), **settings)
    engine = create_engine(s.database_url)
    try:
        yield s, build_services(s, engine, **({"clock": clock} if clock is not None else {}))
    finally:
        await engine.dispose()


# --- hostile text ----------------------------------------------------------------------------------------------
MENTIONS = [
    "@everyone", "@here", "@\u200beveryone", "<@123456789012345678>", "<@!123456789012345678>",
    "<@&123456789012345678>", "<#123456789012345678>", "</imagine:123456789012345678>", "<:pepe:123456789012345678>",
    "<a:dance:123456789012345678>", "<t:0:R>", "<id:customize>", "@ everyone",
]
MARKDOWN = [
    "**bold**", "__under__", "~~strike~~", "||spoiler||", "`code`", "```py\nprint(1)\n```", "```", "> quote",
    ">>> block", "# heading", "-# small", "- item", "1. item", "[link](https://example.com)", "<https://x.example>",
    "https://evil.example/a?b=c", "\\", "*", "_", "~", "|", "\\@everyone", "[@everyone](https://x.example)",
]
BIDI = ["\u202e", "\u202d", "\u202a", "\u202b", "\u202c", "\u200f", "\u200e", "\u2066", "\u2067", "\u2068", "\u2069",
        "\u061c"]
INVISIBLE = ["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad", "\u3164", "\u115f", "\u180e", "\u034f",
             "\u2800", "\U000e0041", "\ufe0f"]
CONTROL = ["\x00", "\x01", "\x07", "\x08", "\x1b[31m", "\x7f", "\x85", "\x9b", "\r\n", "\n", "\t", "\r", "\x0b",
           "\x0c", "\u2028", "\u2029"]
OTHER = [
    "👨\u200d👩\u200d👧\u200d👦", "🏳️\u200d🌈", "e\u0301", "Z\u0337\u0322a\u0338l\u0335g\u0336o\u0334", "ｆｕｌｌ", "𝓼𝓬𝓻𝓲𝓹𝓽",
    "%s", "{0}", "{prompt}", "'; DROP TABLE job; --", "${jndi:ldap://x}", "../../etc/passwd", "\u0000\u0000",
    "a" * 300, "\U0010ffff", "\ue000", "ʼ", "ﷺ", "𒐫", "🇺🇸", "⸻",
]
PIECES = MENTIONS + MARKDOWN + BIDI + INVISIBLE + CONTROL + OTHER
BLANKS = ["", " ", "   ", "\n\n", "\t \u3000\u00a0", "\u200b", "\u200b\u200d\u2060", "\u202e", "\u3164", "\x00",
          "\u2800", "\u0301", " \n\u200f "]
#: Lengths around and far beyond Discord's limits (1500 prompt, 2000 content, 4096 description, 6000 embed).
HUGE = [99, 100, 101, 255, 256, 257, 1024, 1025, 1499, 1500, 1501, 2000, 2001, 4000, 4096, 4097, 6001, 20_000]


def _repeat_to(piece: str, n: int) -> str:
    return (piece * (n // max(1, len(piece)) + 1))[:n]


def hostile_text(max_size: int = 60) -> st.SearchStrategy[str]:
    """Text a hostile member types: any Unicode, mentions, markdown, bidi and invisible characters, controls,
    blank-looking strings, and huge strings around and beyond every limit."""
    pieces = st.lists(st.one_of(st.sampled_from(PIECES), st.text(max_size=6)), max_size=max_size // 4 + 1).map("".join)
    huge = st.tuples(st.sampled_from(PIECES + ["a", "é", "@everyone "]), st.sampled_from(HUGE)).map(
        lambda t: _repeat_to(*t)
    )
    return st.one_of(st.text(max_size=max_size), pieces, st.sampled_from(BLANKS), huge)


# --- blocked terms and the tricks members use to get past them -----------------------------------------------------
#: Latin letter → its lookalikes in other scripts (from the moderation service's own table, plus upper case forms).
LOOKALIKES: dict[str, list[str]] = {}
for _fake, _latin in _CONFUSABLES.items():
    LOOKALIKES.setdefault(_latin, []).append(_fake)
    if _fake.upper() != _fake and len(_fake.upper()) == 1:
        LOOKALIKES[_latin].append(_fake.upper())
SEPARATORS = [" ", "  ", ".", "-", "_", "*", "\u200b", "\u200c", "\u200d", "\u2060", "\u00ad", "\ufeff", "\u202e",
              "\u3000", "\u00a0", "\n", "\u2063", "\U000e0020", "/", "|", "~"]
BENIGN = ["a", "red", "circle", "on", "blue", "square", "in", "the", "style", "of", "painting", "cat", "please"]


def _letter_variants(ch: str) -> st.SearchStrategy[str]:
    options = [ch, ch.upper(), chr(ord(ch) - ord("a") + ord("ａ")), ch + "\u0301", ch + "\u0336", ch + "\ufe0f"]
    if ch.isalpha() and ch.isascii():
        options += [chr(0x1F1E6 + ord(ch) - ord("a")), chr(0x1F150 + ord(ch) - ord("a")),
                    chr(0x1F170 + ord(ch) - ord("a")), chr(0x24D0 + ord(ch) - ord("a"))]
    options += LOOKALIKES.get(ch, [])
    return st.sampled_from(options)


@st.composite
def tricked(draw, term: str) -> str:
    """`term` (plain lower-case letters, maybe two words) disguised: case, full width, accents, symbol letters,
    Cyrillic/Greek lookalikes, and spaces, dots, zero-width or bidi characters between the letters."""
    out = []
    letters = [ch for ch in term if ch != " "]
    for i, ch in enumerate(letters):
        out.append(draw(_letter_variants(ch)))
        if i < len(letters) - 1:
            # Mostly between letters; emoji-like letters (regional indicators) need a separator less often.
            out.append(draw(st.one_of(st.just(""), st.sampled_from(SEPARATORS))))
    return "".join(out)


@st.composite
def prompt_with_term(draw, term: str) -> str:
    """A benign prompt with the disguised term standing as its own word(s) somewhere in it."""
    before = draw(st.lists(st.sampled_from(BENIGN), max_size=4))
    after = draw(st.lists(st.sampled_from(BENIGN), max_size=4))
    return " ".join([*before, draw(tricked(term)), *after])


# --- options of any command ------------------------------------------------------------------------------------
SIZES = ["64x64", "512x768", "128×64", "64*64", "64,64", " 64 x 64 ", "100x64", "0x0", "99999x99999", "64x", "x64",
         "-64x64", "64x64x64", "２５６x２５６", "64\u200bx64"]
FLOATS_BAD = [math.nan, math.inf, -math.inf, -0.0, -1.0, 1e308, -1e-308, 30.000001, 5e-324]


def _png(width: int, height: int, body: bytes = b"\0" * 64) -> bytes:
    """A PNG whose header states `width` x `height` (its pixel data need not match: a crafted file)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(body)) + chunk(b"IEND", b"")


#: Attachments a member could upload: a real tiny image, crafted headers (a 20000x20000 bomb, a 1x1, a truncated
#: one), text named like an image, and a GIF.
HOSTILE_FILES = [("ok.png", _png(4, 4, b"\0" + b"\x80" * 12 + b"\0" + b"\x80" * 12 + b"\0" + b"\x80" * 12 + b"\0"
                                 + b"\x80" * 12)),
                 ("bomb.png", _png(20000, 20000)), ("one.png", _png(1, 1, b"\0\0\0\0")),
                 ("cut.png", _png(64, 64)[:40]), ("notes.png", b"just text"), ("anim.gif", b"GIF89a" + b"\0" * 20)]


def int_option(param: app_commands.Parameter) -> st.SearchStrategy[int]:
    lo, hi = param.min_value, param.max_value
    edges = [0, -1, 1, INT_LIMIT, -INT_LIMIT, 2**31, 2**32, INT_LIMIT - 1]
    for bound in (lo, hi):
        if bound is not None:
            edges += [int(bound) - 1, int(bound), int(bound) + 1]
    edges = [e for e in edges if abs(e) <= INT_LIMIT]
    inside = st.integers(int(lo if lo is not None else -1000), int(hi if hi is not None else 10**6))
    return st.one_of(inside, st.sampled_from(edges), st.integers(-INT_LIMIT, INT_LIMIT))


def float_option(param: app_commands.Parameter) -> st.SearchStrategy[float]:
    lo = float(param.min_value) if param.min_value is not None else -1e6
    hi = float(param.max_value) if param.max_value is not None else 1e6
    return st.one_of(st.floats(lo, hi), st.sampled_from(FLOATS_BAD), st.floats(allow_nan=True, allow_infinity=True))


def _valid_text(param: app_commands.Parameter) -> st.SearchStrategy[str]:
    lo = int(param.min_value) if param.min_value is not None else 0
    hi = int(param.max_value) if param.max_value is not None else 100
    return hostile_text(min(hi, 200)).filter(lambda t: lo <= len(t) <= hi)


def option_strategy(param: app_commands.Parameter, handles: dict[str, list[Any]], *, valid: bool) -> st.SearchStrategy:
    """Values for `param`: with `valid`, what Discord's client lets through (declared type, range, length and
    choices; the text itself still hostile); without, also what a hand-made request could send."""
    kind = param.type
    lo, hi = param.min_value, param.max_value
    if param.choices:
        choices = st.sampled_from([c.value for c in param.choices])
        if valid:
            return choices
        # A hand-made request may name a value off the list, but of the declared type: Discord checks types.
        if kind is discord.AppCommandOptionType.number:
            return st.one_of(choices, float_option(param))
        if kind is discord.AppCommandOptionType.integer:
            return st.one_of(choices, int_option(param))
        return st.one_of(choices, hostile_text(40))
    if kind is discord.AppCommandOptionType.string:
        text = _valid_text(param) if valid else hostile_text(min(int(hi or 100), 200))
        return st.one_of(st.sampled_from(SIZES), text) if param.name == "size" else text
    if kind is discord.AppCommandOptionType.integer:
        if valid:
            return st.integers(int(lo) if lo is not None else -INT_LIMIT, int(hi) if hi is not None else INT_LIMIT)
        return int_option(param)
    if kind is discord.AppCommandOptionType.number:
        if valid:
            return st.floats(float(lo) if lo is not None else -1e6, float(hi) if hi is not None else 1e6)
        return float_option(param)
    if kind is discord.AppCommandOptionType.boolean:
        return st.booleans()
    if kind is discord.AppCommandOptionType.user:
        return st.sampled_from(handles["users"])
    if kind is discord.AppCommandOptionType.channel:
        return st.sampled_from(handles["channels"])
    if kind is discord.AppCommandOptionType.role:
        return st.sampled_from(handles["roles"])
    if kind is discord.AppCommandOptionType.mentionable:
        return st.sampled_from(handles["users"] + handles["roles"])
    if kind is discord.AppCommandOptionType.attachment:
        return st.one_of(st.sampled_from(HOSTILE_FILES), st.tuples(st.sampled_from(["a.png", "b.jpg", "c.webp", "d"]),
                                                                  st.binary(min_size=1, max_size=256)))
    raise AssertionError(f"no strategy for option type {kind}")


def options_strategy(command: app_commands.Command, handles: dict[str, list[Any]]) -> st.SearchStrategy[dict]:
    """Every required option, and each optional one present or not; half the examples keep to what Discord's
    client allows (so the command's own work is reached), half do not."""

    def build(valid: bool) -> st.SearchStrategy[dict]:
        parts: dict[str, st.SearchStrategy[Any]] = {}
        for p in command.parameters:
            value = option_strategy(p, handles, valid=valid)
            parts[p.display_name] = value if p.required else st.one_of(st.none(), value)
        return st.fixed_dictionaries(parts).map(lambda d: {k: v for k, v in d.items() if v is not None})

    return st.booleans().flatmap(build)


def leaf_commands(tree: app_commands.CommandTree) -> list[app_commands.Command]:
    return [c for c in tree.walk_commands() if isinstance(c, app_commands.Command)]


# --- checking what the bot sent ----------------------------------------------------------------------------------
def _embed_problems(embeds: list[dict[str, Any]]) -> list[str]:
    problems = []
    total = 0
    for e in embeds:
        title = e.get("title") or ""
        desc = e.get("description") or ""
        footer = (e.get("footer") or {}).get("text") or ""
        author = (e.get("author") or {}).get("name") or ""
        fields = e.get("fields") or []
        for what, text, limit in (("title", title, EMBED_TITLE), ("description", desc, EMBED_DESCRIPTION),
                                  ("footer", footer, EMBED_FOOTER), ("author", author, EMBED_AUTHOR)):
            if len(text) > limit:
                problems.append(f"embed {what} of {len(text)} characters (limit {limit})")
        if len(fields) > EMBED_FIELDS:
            problems.append(f"{len(fields)} embed fields (limit {EMBED_FIELDS})")
        for f in fields:
            name, value = f.get("name") or "", f.get("value") or ""
            if not name.strip() or not value.strip():
                problems.append(f"embed field with an empty name or value: {f!r:.80}")
            if len(name) > EMBED_FIELD_NAME:
                problems.append(f"embed field name of {len(name)} characters")
            if len(value) > EMBED_FIELD_VALUE:
                problems.append(f"embed field value of {len(value)} characters")
            total += len(name) + len(value)
        total += len(title) + len(desc) + len(footer) + len(author)
    if total > EMBED_TOTAL:
        problems.append(f"embeds of {total} characters in all (limit {EMBED_TOTAL})")
    return problems


def _component_problems(rows: list[dict[str, Any]]) -> list[str]:
    problems = []
    if len(rows) > 5:
        problems.append(f"{len(rows)} component rows (limit 5)")
    for row in rows:
        for c in row.get("components") or []:
            if len(c.get("custom_id") or "") > CUSTOM_ID:
                problems.append(f"custom_id of {len(c['custom_id'])} characters")
            if len(c.get("label") or "") > (TEXT_INPUT_LABEL if c.get("type") == 4 else BUTTON_LABEL):
                problems.append(f"component label of {len(c['label'])} characters")
            if c.get("type") == 4:
                value = c.get("value") or ""
                if len(value) > min(TEXT_INPUT_VALUE, c.get("max_length") or TEXT_INPUT_VALUE):
                    problems.append(f"text input value of {len(value)} characters (max_length {c.get('max_length')})")
    return problems


def _pings(body: dict[str, Any]) -> list[str]:
    if not (body.get("content") or body.get("embeds")):
        return []
    am = body.get("allowed_mentions")
    if am is None:
        return ["a message without allowed_mentions"]
    problems = []
    if am.get("parse"):
        problems.append(f"allowed_mentions parses {am['parse']}")
    if am.get("users") or am.get("roles"):
        problems.append(f"allowed_mentions lists users/roles {am!r}")
    if am.get("replied_user"):
        problems.append("allowed_mentions pings the replied-to user")
    return problems


def message_problems(body: dict[str, Any]) -> list[str]:
    """Everything about a message body (create, edit, interaction response) that Discord would refuse or that would
    ping someone."""
    problems = []
    content = body.get("content") or ""
    if len(content) > CONTENT:
        problems.append(f"content of {len(content)} characters (limit {CONTENT})")
    problems += _embed_problems(body.get("embeds") or [])
    problems += _component_problems(body.get("components") or [])
    problems += _pings(body)
    return problems


def request_problems(entry: Any) -> list[str]:
    """Problems with one HTTP request the bot made (simcord's log entry)."""
    if entry.method not in ("POST", "PATCH", "PUT") or not isinstance(entry.json, dict):
        return []
    body = entry.json
    if entry.path.endswith("/callback"):
        kind, data = body.get("type"), body.get("data") or {}
        if kind == 9:  # modal
            problems = _component_problems(data.get("components") or [])
            if len(data.get("title") or "") > MODAL_TITLE:
                problems.append(f"modal title of {len(data['title'])} characters")
            return problems
        if kind == 8:  # autocomplete
            choices = data.get("choices") or []
            problems = [f"{len(choices)} choices (limit {CHOICES})"] if len(choices) > CHOICES else []
            for c in choices:
                if not 1 <= len(c.get("name") or "") <= CHOICE_NAME:
                    problems.append(f"choice name of {len(c.get('name') or '')} characters")
                if isinstance(c.get("value"), str) and len(c["value"]) > CHOICE_VALUE:
                    problems.append(f"choice value of {len(c['value'])} characters")
            return problems
        return message_problems(data)
    if "/commands" in entry.path:
        return []
    return message_problems(body)


@dataclass
class Outcome:
    """What one interaction did: the bot's replies, new problems, errors and logged bugs, and money moved."""

    result: Any
    problems: list[str]
    crashes: list[str]
    replies: list[Any]
    charged: int
    new_jobs: list[Any]
    #: Whether the actor's quota was checked (False for moderator commands that change quotas on purpose).
    money: bool = True

    @property
    def texts(self) -> list[str]:
        out = []
        for r in self.replies:
            out.append(r.content or "")
            out += [(e.title or "") + " " + (e.description or "") for e in r.embeds]
        return out

    @property
    def refused(self) -> bool:
        """Answered with an ephemeral text (the error handler's way of saying no)."""
        return any(r.ephemeral and r.content for r in self.replies) and not self.new_jobs

    def assert_clean(self, what: str = "") -> None:
        assert not self.crashes, f"{what}: the bot crashed: {self.crashes}"
        assert not self.problems, f"{what}: {self.problems}"


class _ErrorLog(logging.Handler):
    """Log records that mean a bug or a message Discord refused."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR or "could not deliver" in record.getMessage():
            self.records.append(record)


@contextlib.contextmanager
def bypass_client_checks() -> Iterator[None]:
    """Let simcord send what a hand-made request could: option values outside their declared range, length or
    choices, and commands the member's client would hide (default_permissions). Types stay what Discord allows."""
    original = sim_interactions.validate_option_value
    original_access = sim_actors._check_command_access
    plain = (discord.AppCommandOptionType.string.value, discord.AppCommandOptionType.integer.value,
             discord.AppCommandOptionType.number.value, discord.AppCommandOptionType.boolean.value)

    def lenient(command_name: str, option: dict[str, Any], value: Any) -> Any:
        if option["type"] in plain:
            return value
        return original(command_name, option, value)

    sim_interactions.validate_option_value = lenient
    sim_actors._check_command_access = lambda *a, **k: None
    try:
        yield
    finally:
        sim_interactions.validate_option_value = original
        sim_actors._check_command_access = original_access


class HostileWorld:
    """A `World` (tests/bot/exts) on its own event loop, so synchronous hypothesis tests can drive it."""

    def __init__(self, tmp_path: Path, template: Path, **settings: Any):
        self.runner = asyncio.Runner()
        self.w = World(tmp_path, template)
        overrides = {"default_credits_per_day": 10**6, "default_max_concurrent": 10**6} | settings
        self.w.settings = self.w.settings.model_copy(update=overrides)
        self.w.services = build_services(self.w.settings, self.w.engine, **self._service_kwargs())
        self.log = _ErrorLog()
        self.examples = 0

    def _service_kwargs(self) -> dict[str, Any]:
        return {}

    def __enter__(self) -> HostileWorld:
        logging.getLogger().addHandler(self.log)
        self.run(self.w.start())
        return self

    def __exit__(self, *exc: object) -> None:
        logging.getLogger().removeHandler(self.log)
        try:
            self.run(self.w.close())
        finally:
            self.runner.close()

    def run(self, coro: Any) -> Any:
        return self.runner.run(coro)

    @property
    def env(self) -> simcord.Env:
        return self.w.env  # type: ignore[return-value]

    @property
    def handles(self) -> dict[str, list[Any]]:
        w = self.w
        if getattr(w, "artists_role", None) is None:  # a plain role for role options (`/mod quota role-set`)
            w.artists_role = w.guild.create_role("artists")
        return {"users": [w.alice, w.bob, w.mod], "channels": [w.art, w.other], "roles": [w.artists_role]}

    # --- doing something and looking at what happened -----------------------------------------------------------
    async def observe(self, actor: Any, action: Any, *, money: bool = True) -> Outcome:
        """Run `action` (an awaitable that makes one interaction) for `actor` and collect what it did. With `money`,
        the actor's quota must have moved by exactly the cost of the jobs the interaction made (moderator commands
        that change quotas on purpose pass False)."""
        w = self.w
        self.examples += 1
        http_cursor = len(self.env.http_requests)
        error_cursor = self.env.error_cursor
        log_cursor = len(self.log.records)
        used_before = (await w.services.quota.status(w.guild.id, actor.id, [])).used
        last_before = await self._last_job_id()
        result = await action
        await self.env.settle()
        problems = [p for e in self.env.http_requests[http_cursor:] for p in request_problems(e)]
        crashes = [repr(e) for e in self.env.errors_since(error_cursor)]
        crashes += [r.getMessage() for r in self.log.records[log_cursor:]]
        replies = []
        if result is not None and hasattr(result, "followups"):
            replies = ([result.response] if result.response is not None else []) + result.followups
            for r in replies:
                if APOLOGY in (r.content or ""):
                    crashes.append(f"apology: {r.content}")
        new_jobs = [j for j in await w.services.jobs.history(w.guild.id, actor.id, 50) if j.id > last_before]
        used_after = (await w.services.quota.status(w.guild.id, actor.id, [])).used
        charged = used_after - used_before
        if money and charged != sum(j.cost for j in new_jobs if str(j.charge_state) == "reserved"):
            problems.append(f"charged {charged} image(s) for {len(new_jobs)} new job(s)")
        return Outcome(result, problems, crashes, replies, charged, new_jobs, money)

    async def _last_job_id(self) -> int:
        from sqlalchemy import func, select

        from bot.db.models import Job

        async with self.w.services.sessions() as s:
            return (await s.execute(select(func.max(Job.id)))).scalar() or 0

    async def slash(self, actor: Any, name: str, options: dict[str, Any] | None = None, *, where: Any = None) -> Outcome:
        """`/name options…` in `where` (the art channel) as a hand-made request would send it (see
        `bypass_client_checks`)."""

        async def go():
            with bypass_client_checks():
                return await actor.slash(where or self.w.art, name, **(options or {}))

        return await self.observe(actor, go(), money=not name.startswith("mod "))

    async def click(self, actor: Any, message: discord.Message, custom_id: str) -> Outcome:
        """A click on `custom_id` of `message`, whether or not the message shows such a button."""
        backend = self.env.backend

        async def go():
            stored = backend.get_message(message.channel.id, message.id)
            data = {"custom_id": custom_id, "component_type": ComponentType.BUTTON}
            return await sim_actors._component_interaction(actor, stored, data)

        # ✖ refunds the job it cancels: the actor's usage goes down on purpose.
        return await self.observe(actor, go(), money=not custom_id.endswith(":x"))

    async def submit_remix(self, actor: Any, job_id: int, prompt: str, negative: str | None = None) -> Outcome:
        """The remix modal of `job_id` submitted with any text (the modal's own max_length is not enforced here)."""
        rows = [{"type": 1, "components": [{"type": 4, "custom_id": "prompt", "value": prompt}]}]
        if negative is not None:
            rows.append({"type": 1, "components": [{"type": 4, "custom_id": "negative", "value": negative}]})
        data = {"custom_id": f"remix:{job_id}", "components": rows}
        go = sim_actors._dispatch_actor_interaction(actor, InteractionType.MODAL_SUBMIT, self.w.art, data)
        return await self.observe(actor, go)

    async def autocomplete(self, actor: Any, name: str, option: str, current: str) -> Outcome:
        async def go():
            with bypass_client_checks():
                await actor.autocomplete(self.w.art, name, option, current)

        return await self.observe(actor, go())


@dataclass
class Tally:
    """Counts for a reliability record."""

    runs: int = 0
    failures: int = 0
    accepted: int = 0
    refused: int = 0
    notes: list[str] = field(default_factory=list)

    def add(self, outcome: Outcome) -> None:
        self.runs += 1
        self.accepted += bool(outcome.new_jobs)
        self.refused += outcome.refused
        if outcome.crashes or outcome.problems:
            self.failures += 1
            if len(self.notes) < 5:
                self.notes.append("; ".join(outcome.crashes + outcome.problems)[:300])

    @property
    def note(self) -> str:
        head = f"{self.accepted} made a job, {self.refused} refused with a message"
        return "; ".join([head, *self.notes])


@contextlib.contextmanager
def recorded(reliability: Any, name: str) -> Iterator[Tally]:
    """A Tally that is written to the reliability record `name` when the block ends, passed or failed."""
    tally = Tally()
    try:
        yield tally
    finally:
        reliability.record(name, runs=max(1, tally.runs), failures=tally.failures, note=tally.note)
