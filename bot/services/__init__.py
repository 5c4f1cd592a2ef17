"""Domain services of the bot (no Discord code): quotas, jobs, moderation, audit log, image files, model policy.

Services take an `async_sessionmaker` (bot.db.make_sessionmaker) and return frozen dataclasses, never ORM rows.
`open_services(settings)` migrates the database and wires everything together:

    async with open_services(get_settings()) as services:
        job = await services.jobs.create(guild_id, channel_id, user_id, role_ids, prompt="a red fox")
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from bot.config import Settings
from bot.db.engine import create_engine, make_sessionmaker
from bot.db.migrate import migrate
from bot.db.models import utcnow
from bot.services.audit import AuditEntry, AuditService
from bot.services.images import ImageStore, ImageWriteError, StoredImage
from bot.services.jobs import ImageView, JobService, JobView, NewImage
from bot.services.model_policy import ModelPolicy, ModelPolicyService
from bot.services.moderation import ModerationService
from bot.services.quota import Limits, QuotaService, QuotaStatus


@dataclass(frozen=True)
class Services:
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    quota: QuotaService
    jobs: JobService
    moderation: ModerationService
    audit: AuditService
    images: ImageStore
    model_policy: ModelPolicyService


def build_services(settings: Settings, engine: AsyncEngine, *, clock: Callable[[], datetime] = utcnow) -> Services:
    """Wire the services over an existing engine (the database must already be migrated)."""
    sessions = make_sessionmaker(engine)
    quota = QuotaService(sessions, settings.default_limits(), clock=clock, caps=settings.quota_caps())
    return Services(
        engine=engine,
        sessions=sessions,
        quota=quota,
        jobs=JobService(sessions, quota, clock=clock),
        moderation=ModerationService(sessions, clock=clock),
        audit=AuditService(sessions),
        images=ImageStore(settings.data_dir),
        model_policy=ModelPolicyService(sessions, clock=clock),
    )


@asynccontextmanager
async def open_services(settings: Settings, *, run_migrations: bool = True) -> AsyncIterator[Services]:
    """Migrate (alembic upgrade head), open the engine, yield the services, dispose the engine on exit."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if run_migrations:
        await migrate(settings.database_url)
    engine = create_engine(settings.database_url)
    try:
        services = build_services(settings, engine)
        services.images.sweep_temp()  # nothing writes images yet: whatever temporary file exists, a crash left
        yield services
    finally:
        await engine.dispose()


__all__ = [
    "AuditEntry",
    "AuditService",
    "ImageStore",
    "ImageWriteError",
    "ImageView",
    "JobService",
    "JobView",
    "Limits",
    "ModelPolicy",
    "ModelPolicyService",
    "ModerationService",
    "NewImage",
    "QuotaService",
    "QuotaStatus",
    "Services",
    "StoredImage",
    "build_services",
    "open_services",
]
