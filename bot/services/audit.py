"""The audit log of moderator actions: who did what to whom, with the parameters as JSON.

Services write an entry with `write_audit()` inside the same transaction as the action itself, so an action and
its log entry are stored together or not at all. `AuditService` reads them back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.db.engine import run_read
from bot.db.models import AuditLog, utcnow


@dataclass(frozen=True)
class AuditEntry:
    id: int
    guild_id: int
    actor_id: int
    action: str
    target: str | None
    details: dict[str, Any]
    at: datetime


async def write_audit(
    session: AsyncSession,
    guild_id: int,
    actor_id: int,
    action: str,
    target: str | None,
    details: dict[str, Any] | None = None,
    at: datetime | None = None,
) -> None:
    """Add an audit entry in the caller's transaction. `action` is dotted ("ban.add"), `target` e.g. "user:123"."""
    session.add(
        AuditLog(
            guild_id=guild_id,
            actor_id=actor_id,
            action=action,
            target=target,
            details=json.dumps(details or {}, default=str, sort_keys=True),
            at=at or utcnow(),
        )
    )
    await session.flush()


def _view(row: AuditLog) -> AuditEntry:
    return AuditEntry(
        id=row.id,
        guild_id=row.guild_id,
        actor_id=row.actor_id,
        action=row.action,
        target=row.target,
        details=json.loads(row.details or "{}"),
        at=row.at,
    )


class AuditService:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]):
        self.sessions = sessions

    async def recent(
        self, guild_id: int, *, limit: int = 25, action: str | None = None, actor_id: int | None = None
    ) -> list[AuditEntry]:
        """The newest entries of a guild first, optionally only one action (prefix, e.g. "quota.") or actor."""

        async def work(s: AsyncSession) -> list[AuditEntry]:
            q = select(AuditLog).where(AuditLog.guild_id == guild_id)
            if action:
                q = q.where(AuditLog.action.startswith(action, autoescape=True))
            if actor_id is not None:
                q = q.where(AuditLog.actor_id == actor_id)
            rows = (await s.scalars(q.order_by(AuditLog.id.desc()).limit(limit))).all()
            return [_view(r) for r in rows]

        return await run_read(self.sessions, work)
