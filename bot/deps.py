"""What the extensions use, typed: the settings, the domain services and the job queue.

`bot/__main__.py` (or a test) opens the resources and hands them to `ImagineBot` as one `Deps`; a cog reaches them
with `bot.exts.common.deps(interaction)`. Every attribute has a type, so a reader (and a type checker) can follow a
call from a cog into the service that does the work.

`python -m bot sync` builds a `Deps` without services or queue (it only logs in and syncs commands); asking such a
`Deps` for a service raises instead of handing back None.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from bot.config import Settings
    from bot.dispatch.registry import ServedModel
    from bot.services import Services
    from bot.services.audit import AuditService
    from bot.services.images import ImageStore
    from bot.services.jobs import JobService, JobView
    from bot.services.model_policy import ModelPolicyService
    from bot.services.moderation import ModerationService
    from bot.services.quota import QuotaService
    from generation.protocol.cards import ModelCard


class QueueControl(Protocol):
    """What the commands ask of the job queue (`bot.dispatch.Dispatcher` in the bot; a recording stand-in in tests)."""

    async def publish(self, job: JobView) -> None:
        """Hand a newly created job to the queue (the job row exists already)."""

    async def cancel(self, job_id: int) -> None:
        """Tell the workers that a job was cancelled; drop it from the queue if it still waits."""

    async def kick(self) -> None:
        """Look for jobs to dispatch now (after a guild's queue was resumed)."""

    async def served_models(self, *, loading_wait: float = 0.0) -> list[ServedModel]:
        """The models live workers serve now, sorted by name: each with its card (limits, defaults, what it knows),
        its workers, whether they are all busy, and how many jobs wait for it. Right after the bot starts it waits a
        moment for the workers' first announcements rather than answer "none"; with `loading_wait` it also waits up
        to that many seconds while a worker is still loading its first model."""
        ...

    def card(self, name: str) -> ModelCard | None:
        """The card of the served model called `name` (any case), or None when no live worker serves it."""
        ...


class NotOpened(RuntimeError):
    """A service or the queue was asked for on a `Deps` that was built without it (`python -m bot sync`)."""


class NoQueue:
    """The queue of a process that has none (`python -m bot sync`): every call says so."""

    async def publish(self, job: JobView) -> None:
        raise NotOpened("the job queue is not open in this process")

    async def cancel(self, job_id: int) -> None:
        raise NotOpened("the job queue is not open in this process")

    async def kick(self) -> None:
        raise NotOpened("the job queue is not open in this process")

    async def served_models(self, *, loading_wait: float = 0.0) -> list[ServedModel]:
        raise NotOpened("the job queue is not open in this process")

    def card(self, name: str) -> ModelCard | None:
        raise NotOpened("the job queue is not open in this process")


@dataclass(frozen=True)
class Deps:
    settings: Settings
    services: Services | None = None
    dispatcher: QueueControl = NoQueue()

    def _services(self) -> Services:
        if self.services is None:
            raise NotOpened("the services are not open in this process (built for `python -m bot sync`)")
        return self.services

    @property
    def jobs(self) -> JobService:
        return self._services().jobs

    @property
    def quota(self) -> QuotaService:
        return self._services().quota

    @property
    def moderation(self) -> ModerationService:
        return self._services().moderation

    @property
    def model_policy(self) -> ModelPolicyService:
        return self._services().model_policy

    @property
    def audit(self) -> AuditService:
        return self._services().audit

    @property
    def images(self) -> ImageStore:
        return self._services().images

    @property
    def sessions(self) -> async_sessionmaker[AsyncSession]:
        return self._services().sessions
