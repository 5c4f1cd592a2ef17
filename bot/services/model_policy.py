"""What a guild's moderators decided about the served models: the default model of /imagine and the hidden models.

The models themselves are not stored: the bot learns them from the workers' cards (bot.dispatch.registry). A guild
keeps only
- its default model (`guild_setting.default_model`): what /imagine uses when a member names no model; none set means
  the one served model, or the first served model by name (bot.exts.imagine.models);
- its hidden models (`hidden_model`): members are neither offered them nor allowed to choose them; moderators still
  see them (marked hidden) and may use them.

Model names are compared as queue tokens (`generation.protocol.messages.model_token`: case, spaces and punctuation
do not matter), as the workers route jobs by them. A hidden model cannot be the default, and the default cannot be
hidden: each is refused with a message saying what to do first. Every change writes an audit-log entry in the same
transaction.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, select, update
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.db.engine import run_read, run_write
from bot.db.models import GuildSetting, HiddenModel, NsfwPolicy, utcnow
from bot.errors import InvalidSetting
from bot.services.audit import write_audit
from generation.protocol.messages import model_token

#: A model name as cards have them (generation.protocol.cards): 1-80 letters, digits, spaces, '.', '_' or '-'.
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._ -]{0,79}$")


@dataclass(frozen=True)
class HiddenModelView:
    name: str
    hidden_by: int
    hidden_at: datetime


@dataclass(frozen=True)
class ModelPolicy:
    """A guild's default model (None: chosen automatically) and its hidden models, by name."""

    guild_id: int
    default_model: str | None = None
    hidden: tuple[HiddenModelView, ...] = ()

    def is_hidden(self, name: str) -> bool:
        token = model_token(name)
        return any(model_token(h.name) == token for h in self.hidden)

    def is_default(self, name: str) -> bool:
        return self.default_model is not None and model_token(self.default_model) == model_token(name)


def check_model_name(name: str) -> str:
    """`name` trimmed, or InvalidSetting naming the rule."""
    text = (name or "").strip()
    if not MODEL_NAME.match(text):
        raise InvalidSetting(
            "model", text[:90], "a model name has 1-80 letters, digits, spaces, '.', '_' or '-' (and starts with a "
            "letter or digit)"
        )
    return text


class ModelPolicyService:
    """Reads and changes a guild's model policy. Methods taking `by` (the moderator's id) write the audit log."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], *, clock: Callable[[], datetime] = utcnow):
        self.sessions = sessions
        self.clock = clock

    async def policy(self, guild_id: int) -> ModelPolicy:
        """The guild's default model and hidden models (none of either if it never set any)."""

        async def work(s: AsyncSession) -> ModelPolicy:
            return await self._policy_in(s, guild_id)

        return await run_read(self.sessions, work)

    async def _policy_in(self, s: AsyncSession, guild_id: int) -> ModelPolicy:
        default = (
            await s.execute(select(GuildSetting.default_model).where(GuildSetting.guild_id == guild_id))
        ).scalar_one_or_none()
        rows = (
            await s.scalars(select(HiddenModel).where(HiddenModel.guild_id == guild_id).order_by(HiddenModel.model))
        ).all()
        hidden = tuple(HiddenModelView(r.model, r.hidden_by, r.hidden_at) for r in rows)
        return ModelPolicy(guild_id, default, hidden)

    async def set_default(self, guild_id: int, name: str | None, by: int) -> str | None:
        """Make `name` the model /imagine uses when a member names none (None: choose automatically again).
        Returns the previous default. A hidden model is refused (show it first)."""
        name = None if name is None else check_model_name(name)

        async def work(s: AsyncSession) -> str | None:
            policy = await self._policy_in(s, guild_id)
            if name is not None and policy.is_hidden(name):
                raise InvalidSetting("model", name, "it is hidden in this server; `/mod model show` it first")
            now = self.clock()
            if policy.default_model is None and name is None:
                return None
            await s.execute(
                sqlite_insert(GuildSetting)
                .values(guild_id=guild_id, nsfw_policy=NsfwPolicy.BLOCK.value, paused=False, created_at=now,
                        updated_at=now)
                .on_conflict_do_nothing(index_elements=["guild_id"])
            )
            await s.execute(
                update(GuildSetting).where(GuildSetting.guild_id == guild_id).values(default_model=name, updated_at=now)
            )
            details = {"model": name, "previous": policy.default_model}
            await write_audit(s, guild_id, by, "model.default", f"model:{name or '-'}", details, now)
            return policy.default_model

        return await run_write(self.sessions, work)

    async def hide(self, guild_id: int, name: str, by: int) -> bool:
        """Take a model off the members' list; False if it was hidden already. The default model is refused (set
        another default first)."""
        name = check_model_name(name)

        async def work(s: AsyncSession) -> bool:
            policy = await self._policy_in(s, guild_id)
            if policy.is_hidden(name):
                return False
            if policy.is_default(name):
                raise InvalidSetting(
                    "model", name, "it is this server's default model; set another default with `/mod model default` "
                    "first"
                )
            now = self.clock()
            s.add(HiddenModel(guild_id=guild_id, model=name, hidden_by=by, hidden_at=now))
            await write_audit(s, guild_id, by, "model.hide", f"model:{name}", {}, now)
            return True

        return await run_write(self.sessions, work)

    async def show(self, guild_id: int, name: str, by: int) -> bool:
        """Offer a hidden model to members again; False if it was not hidden."""
        name = check_model_name(name)

        async def work(s: AsyncSession) -> bool:
            token = model_token(name)
            rows = (await s.scalars(select(HiddenModel).where(HiddenModel.guild_id == guild_id))).all()
            names = [r.model for r in rows if model_token(r.model) == token]
            if not names:
                return False
            await s.execute(delete(HiddenModel).where(HiddenModel.guild_id == guild_id, HiddenModel.model.in_(names)))
            await write_audit(s, guild_id, by, "model.show", f"model:{names[0]}", {}, self.clock())
            return True

        return await run_write(self.sessions, work)
