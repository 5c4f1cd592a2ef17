"""Interaction tests: the real bot (real discord.py, real services over a migrated SQLite file) in simcord's
in-memory Discord. The queue is a recording stand-in; tests play the worker by storing outcomes themselves and
calling the presenter, as the dispatcher would. The stand-in also plays the workers' announcements: the models it
serves are the cards in `world.dispatcher.cards` (one small shapes model, `SHAPES`, unless a test sets others).
"""

from __future__ import annotations

import io
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import discord
import pytest
import simcord
from PIL import Image

from bot.app import Deps, ImagineBot
from bot.config import Settings
from bot.db.engine import create_engine
from bot.db.migrate import upgrade_sync
from bot.dispatch.registry import ServedModel
from bot.services import build_services
from generation.protocol.cards import ModelCard
from generation.protocol.messages import model_token

#: The model the stand-in workers serve unless a test sets others.
SHAPES = ModelCard(
    name="shapes", architecture="shapes", description="Flat shapes on simple backgrounds.",
    knows={"shapes": ("circle", "square"), "colors": ("red", "blue")},
    min_side=64, max_side=256, default_width=64, default_height=64, default_steps=4,
)


def card(name: str, **kw) -> ModelCard:
    """A card for tests: `name`, an SD 1.x architecture and a description unless given, the rest as ModelCard's
    defaults (sides 64-1024, 512x512, 25 steps)."""
    kw.setdefault("architecture", "sd1")
    kw.setdefault("description", f"The {name} test model.")
    return ModelCard(name=name, **kw)


@dataclass
class RecordingDispatcher:
    """Stands in for the NATS dispatcher: remembers what the bot asked of the queue, and serves the models of
    `cards` (all busy when named in `busy`, with `waiting[name]` jobs waiting) as live workers would announce them."""

    published: list[int] = field(default_factory=list)
    cancelled: list[int] = field(default_factory=list)
    kicks: int = 0
    fail_publish: bool = False
    cards: list[ModelCard] = field(default_factory=lambda: [SHAPES])
    busy: set[str] = field(default_factory=set)
    waiting: dict[str, int] = field(default_factory=dict)

    async def publish(self, job) -> None:
        if self.fail_publish:
            raise ConnectionError("queue down")
        self.published.append(job.id)

    async def cancel(self, job_id: int) -> None:
        self.cancelled.append(job_id)

    async def kick(self) -> None:
        self.kicks += 1

    async def served_models(self, *, loading_wait: float = 0.0) -> list[ServedModel]:
        served = [ServedModel(c, (f"worker-{model_token(c.name)}",), busy=c.name in self.busy,
                              waiting=self.waiting.get(c.name, 0)) for c in self.cards]
        return sorted(served, key=lambda m: (m.name.casefold(), m.name))

    def card(self, name: str) -> ModelCard | None:
        return next((c for c in self.cards if model_token(c.name) == model_token(name)), None)


@pytest.fixture(scope="session")
def migrated_db(tmp_path_factory) -> Path:
    """One database migrated with the real Alembic revisions; each test gets a copy."""
    path = tmp_path_factory.mktemp("template") / "bot.db"
    upgrade_sync(f"sqlite+aiosqlite:///{path}")
    return path


def png(color=(200, 30, 30), size=(64, 64)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="PNG")
    return out.getvalue()


class World:
    """A running bot in simcord with one guild, an art channel, a member and a moderator."""

    def __init__(self, tmp_path: Path, template: Path):
        self.tmp = tmp_path
        data = tmp_path / "data"
        data.mkdir()
        shutil.copy(template, data / "bot.db")
        # No per-member cooldown here: these tests start jobs back to back; tests/hardening/test_abuse*.py cover it.
        # No model folder either: the bot reads no model files, its models are the stand-in's cards.
        self.settings = Settings(
            _env_file=None, data_dir=data, model_path=str(tmp_path / "no-model-here"), discord_token=None,
            imagine_cooldown_seconds=0,
        )
        self.engine = create_engine(self.settings.database_url)
        self.services = build_services(self.settings, self.engine)
        self.dispatcher = RecordingDispatcher()
        self.env: simcord.Env | None = None

    def make_bot(self) -> ImagineBot:
        return ImagineBot(Deps(self.settings, self.services, self.dispatcher))

    @property
    def bot(self) -> ImagineBot:
        return self.env.bot  # type: ignore[union-attr,return-value]

    async def start(self) -> None:
        self.env = simcord.Env(self.make_bot())
        await self.env.start()
        self.guild = self.env.create_guild("Art Club")
        self.art = self.guild.create_text_channel("art")
        self.other = self.guild.create_text_channel("general")
        self.alice = self.guild.add_member(self.env.create_user("alice"))
        self.bob = self.guild.add_member(self.env.create_user("bob"))
        mod_role = self.guild.create_role("mods", permissions=discord.Permissions(manage_guild=True))
        self.mod = self.guild.add_member(self.env.create_user("mod"), roles=[mod_role])
        await self.bot.tree.sync()
        await self.services.moderation.add_art_channel(self.guild.id, self.art.id, by=self.mod.id)

    async def restart(self) -> None:
        """A fresh bot process: new ImagineBot, nothing kept in memory, same database."""
        await self.env.restart_bot(self.make_bot())  # type: ignore[union-attr]
        await self.bot.tree.sync()

    async def close(self) -> None:
        if self.env is not None:
            await self.env.shutdown()
        await self.engine.dispose()

    # --- playing the worker ------------------------------------------------------------------------------------
    async def finish(self, job_id: int, colors=((200, 30, 30), (30, 200, 30), (30, 30, 200), (220, 220, 220)), nsfw=()) -> discord.Message | None:
        """Run job `job_id` to success the way the dispatcher does: store images, succeed, then present."""
        job = await self.services.jobs.get(job_id)
        await self.services.jobs.start(job_id, worker="test")
        new = []
        for i in range(job.num_images):
            stored = self.services.images.save(job_id, i, png(colors[i % len(colors)], (job.width, job.height)))
            new.append((i, job.seed + i, stored.path, stored.sha256, i in nsfw))
        await self.services.jobs.succeed(job_id, new)
        message = await self.bot.presenter.job_succeeded(job_id)
        await self.env.settle()
        return message

    def last(self, channel=None) -> discord.Message:
        return (channel or self.art).last_message

    async def latest_job(self):
        jobs = await self.services.jobs.queue()
        return jobs[-1]


@pytest.fixture
async def world(tmp_path, migrated_db):
    w = World(tmp_path, migrated_db)
    await w.start()
    try:
        yield w
    finally:
        await w.close()
