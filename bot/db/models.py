"""The database schema (SQLAlchemy 2, typed `Mapped` columns). Table names are singular; times are `*_at`, stored
as UTC and returned as aware UTC datetimes. Changes to this file need an Alembic revision in `migrations/versions`.

Tables
------
guild_setting   one row per guild: NSFW policy, queue paused, quota defaults (NULL = the bot's settings default),
                the default model of /imagine (NULL = chosen from the served models, see bot.exts.imagine.models)
hidden_model    models a guild's moderators took off the /imagine model list (by name, compared as queue tokens)
art_channel     channels of a guild where /imagine is allowed (none listed = everywhere)
role_quota      per-role quota overrides (NULL field = not overridden by this role)
user_quota      per-(guild, user) usage of the rolling window, active job count, per-user limit overrides
job             one generation request: its parameters (as JSON), state, quota ledger, attempts, timestamps, messages
image           the files a job produced (path under data/ and sha256)
ban             members barred from generating in a guild
blocked_term    terms refused in prompts (stored normalised, see bot.services.moderation)
audit_log       every moderator action
server_style    a guild's named styles (`/mod style`): a prompt template holding `{prompt}`, a negative, defaults
personal_style  a member's own named styles in a guild (`/style save`), capped in number (bot.services.styles)
showcase_setting the ⭐ showcase of a guild: its channel and the number of ⭐ that reposts a result
showcase_post   the jobs reposted to the showcase: one row per job, claimed before posting (exactly once)
member_setting  a member's own defaults for /imagine in a guild (`/settings`): model, style, aspect, steps, guidance,
                count (NULL = not set), and public or stealth mode
channel_default a channel's defaults for /imagine (`/mod channel-defaults`), below a member's own
job_fts         the web gallery's full-text index of posted prompts (migration 0008; an FTS5 table the models do not
                map, kept by triggers on `job`, see `UNMAPPED_TABLES`)

A job's generation parameters live in ONE JSON column, `job.request`: the validated
`generation.protocol.contract.GenerationRequest` as `to_json(with_image=False)` writes it. The request class is the
only place its fields are declared, so adding one needs no column, no migration and no change to the job service
(give it a default: the JSON of older jobs lacks it). Renaming or removing a field does need a revision that
rewrites the stored JSON, as the request refuses fields it does not know.
Columns of their own are kept only for what SQL filters, orders, joins or sums on (owner, state, quota ledger, the
source image, timestamps, messages) plus `model`, a copy of the request's model for queries about which models
have work waiting. Nothing queries a job's mode, prompt or size in SQL; should a query need one, SQLite reads it
with `json_extract(request, '$.steps')`.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


#: Tables of the schema that no model maps: the gallery's FTS5 index of prompts (migration 0008) and the shadow tables
#: SQLite keeps for it. Comparing the models with a database (tests, `alembic revision --autogenerate`) leaves them out.
UNMAPPED_TABLES = frozenset(
    {"job_fts", *(f"job_fts_{part}" for part in ("data", "idx", "content", "docsize", "config"))})


def include_name(name: str | None, type_: str, parent_names: object) -> bool:
    """Alembic's `include_name` hook: False for the tables in UNMAPPED_TABLES."""
    return not (type_ == "table" and name in UNMAPPED_TABLES)


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator):
    """Stores naive UTC (SQLite has no time zones) and hands back aware UTC datetimes.

    Naive datetimes given to it are taken as UTC already. Comparisons in SQL work because every value is written in
    the same format.
    """

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        return value.replace(tzinfo=UTC)


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    POSTED = "posted"


class ChargeState(enum.StrEnum):
    """Where a job's quota reservation stands. Moves once: reserved -> committed | refunded."""

    RESERVED = "reserved"
    COMMITTED = "committed"
    REFUNDED = "refunded"


class NsfwPolicy(enum.StrEnum):
    #: Images flagged by the safety checker are never shown.
    BLOCK = "block"
    #: Flagged images are shown only in Discord's age-restricted channels.
    AGE_RESTRICTED = "age_restricted"
    #: Flagged images are shown everywhere /imagine is allowed.
    ALLOW = "allow"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), int: Integer}


# Discord snowflakes are 64-bit; SQLite stores every INTEGER as 64-bit anyway.
Snowflake = BigInteger


class GuildSetting(Base):
    __tablename__ = "guild_setting"

    guild_id: Mapped[int] = mapped_column(Snowflake, primary_key=True, autoincrement=False)
    nsfw_policy: Mapped[str] = mapped_column(
        String(20), default=NsfwPolicy.BLOCK.value, server_default=NsfwPolicy.BLOCK.value
    )
    paused: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    #: The daily fast budget in units (hundredths of a credit, bot.services.costs; migration 0010 converted the
    #: image counts it held before). NULL = the bot's settings.
    images_per_day: Mapped[int | None]
    #: The daily relax budget in units; NULL = the bot's settings, 0 = no relax lane.
    relax_per_day: Mapped[int | None]
    max_concurrent: Mapped[int | None]
    max_steps: Mapped[int | None]
    max_side: Mapped[int | None]
    #: The model /imagine uses when a member names none (a model card's name); NULL = chosen automatically.
    default_model: Mapped[str | None] = mapped_column(String(80))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    __table_args__ = (CheckConstraint("nsfw_policy IN ('block', 'age_restricted', 'allow')", name="nsfw_policy"),)


class HiddenModel(Base):
    """A model the guild's moderators hid: members are not offered it and may not choose it."""

    __tablename__ = "hidden_model"

    guild_id: Mapped[int] = mapped_column(Snowflake, primary_key=True, autoincrement=False)
    #: The model's name as a card gives it (or as the moderator typed it, for a model not served then).
    model: Mapped[str] = mapped_column(String(80), primary_key=True)
    hidden_by: Mapped[int] = mapped_column(Snowflake)
    hidden_at: Mapped[datetime] = mapped_column(default=utcnow)


class ArtChannel(Base):
    __tablename__ = "art_channel"

    guild_id: Mapped[int] = mapped_column(Snowflake, primary_key=True, autoincrement=False)
    channel_id: Mapped[int] = mapped_column(Snowflake, primary_key=True, autoincrement=False)
    added_by: Mapped[int] = mapped_column(Snowflake)
    added_at: Mapped[datetime] = mapped_column(default=utcnow)


class RoleQuota(Base):
    __tablename__ = "role_quota"

    guild_id: Mapped[int] = mapped_column(Snowflake, primary_key=True, autoincrement=False)
    role_id: Mapped[int] = mapped_column(Snowflake, primary_key=True, autoincrement=False)
    #: Daily fast and relax budgets in units (hundredths of a credit).
    images_per_day: Mapped[int | None]
    relax_per_day: Mapped[int | None]
    max_concurrent: Mapped[int | None]
    max_steps: Mapped[int | None]
    max_side: Mapped[int | None]
    updated_by: Mapped[int] = mapped_column(Snowflake)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class UserQuota(Base):
    """Usage of one member in one guild.

    `used` counts units (hundredths of a credit, bot.services.costs) charged to the fast budget in the window that
    started at `window_started_at` (NULL: no window open), `relax_used` those charged to the relax budget in the
    same window; `used` may go below zero after a moderator grant. `active` counts jobs holding a reservation
    (queued or running, either lane). The `*_override` columns are per-user limits set by a moderator (NULL = from
    roles/guild/defaults); `images_per_day_override` is the fast budget in units (the name predates migration 0010).
    """

    __tablename__ = "user_quota"

    guild_id: Mapped[int] = mapped_column(Snowflake, primary_key=True, autoincrement=False)
    user_id: Mapped[int] = mapped_column(Snowflake, primary_key=True, autoincrement=False)
    used: Mapped[int] = mapped_column(default=0, server_default="0")
    relax_used: Mapped[int] = mapped_column(default=0, server_default="0")
    window_started_at: Mapped[datetime | None]
    active: Mapped[int] = mapped_column(default=0, server_default="0")
    images_per_day_override: Mapped[int | None]
    max_concurrent_override: Mapped[int | None]
    relax_per_day_override: Mapped[int | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    __table_args__ = (CheckConstraint("active >= 0", name="active_not_negative"),)


class Job(Base):
    __tablename__ = "job"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    guild_id: Mapped[int] = mapped_column(Snowflake)
    channel_id: Mapped[int] = mapped_column(Snowflake)
    user_id: Mapped[int] = mapped_column(Snowflake)
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED.value)

    # Quota ledger: units charged (hundredths of a credit, bot.services.costs), the lane whose budget paid them
    # (0 fast, 1 relax: also the lane the job waits in), the window they were charged to, and whether they were
    # committed or refunded.
    cost: Mapped[int]
    lane: Mapped[int] = mapped_column(default=0, server_default="0")
    charge_state: Mapped[str] = mapped_column(String(16), default=ChargeState.RESERVED.value)
    charge_window_started_at: Mapped[datetime | None]

    #: The generation request (generation.protocol.contract.GenerationRequest) as JSON, without the init image:
    #: every parameter of the job. Written once by JobService.create, read back by JobView.request.
    request: Mapped[str] = mapped_column(Text)
    #: The request's `model` ("" = the worker's default), copied here so that SQL can ask which models have work.
    model: Mapped[str] = mapped_column(String(200), default="")
    # The init image of a variation/upscale: image `source_image_index` of job `source_job_id`.
    source_job_id: Mapped[int | None] = mapped_column(ForeignKey("job.id", ondelete="SET NULL"))
    source_image_index: Mapped[int | None]

    #: 32 random bytes made with the job (`JobService.create`) and sent with its job message: the worker signs the
    #: job's outcome with it and the bot records only outcomes it can check (`generation.protocol.signing`).
    secret: Mapped[bytes] = mapped_column(LargeBinary(32))

    attempts: Mapped[int] = mapped_column(default=0)
    worker: Mapped[str | None] = mapped_column(String(200))
    error: Mapped[str | None] = mapped_column(Text)
    cancelled_by: Mapped[int | None] = mapped_column(Snowflake)

    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    dispatched_at: Mapped[datetime | None]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    posted_at: Mapped[datetime | None]

    # The message that shows progress while the job runs, and the message the result was posted as.
    progress_channel_id: Mapped[int | None] = mapped_column(Snowflake)
    progress_message_id: Mapped[int | None] = mapped_column(Snowflake)
    posted_channel_id: Mapped[int | None] = mapped_column(Snowflake)
    posted_message_id: Mapped[int | None] = mapped_column(Snowflake)
    #: When 🗑️ deleted the job's result (its message and image files are gone; the row stays for quotas and the
    #: audit log). NULL: not deleted.
    deleted_at: Mapped[datetime | None]
    #: The job's round in the fair order while it waits undispatched (bot.services.jobs, "Fair order"): its owner's
    #: jobs in flight plus its rank among the owner's waiting jobs. NULL once it is dispatched, running or final.
    #: Kept up to date by `JobService` at each change of the owner's jobs, so the line is read through an index.
    fair_round: Mapped[int | None]
    #: A moderator took the job out of the web gallery (`/mod gallery hide`, bot.gallery); Discord is unaffected.
    gallery_hidden: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    #: Made while its member was in stealth mode (`/settings mode:stealth`, migration 0011): left out of the web
    #: gallery and the ⭐ showcase. Set once at creation; its Discord message is posted in its channel as usual.
    stealth: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")

    images: Mapped[list[Image]] = relationship(
        back_populates="job", order_by="Image.index", cascade="all, delete-orphan", lazy="raise"
    )

    __table_args__ = (
        CheckConstraint("status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled', 'posted')", name="status"),
        CheckConstraint("charge_state IN ('reserved', 'committed', 'refunded')", name="charge_state"),
        CheckConstraint("cost >= 0", name="cost_not_negative"),
        Index("ix_job_status_id", "status", "id"),
        Index("ix_job_guild_id_user_id_id", "guild_id", "user_id", "id"),
        # The line (migrations 0007, 0010): dispatched jobs by dispatch time, waiting ones in fair order (fast lane
        # first), each read or counted from the front without touching the rest; a member's active jobs; a guild's
        # active jobs; the models active jobs wait for; the variations and upscales made from a job (the retention
        # sweep's check).
        Index("ix_job_status_dispatched_at_lane_fair_round_id", "status", "dispatched_at", "lane", "fair_round", "id"),
        Index("ix_job_user_id_status_dispatched_at", "user_id", "status", "dispatched_at"),
        Index("ix_job_guild_id_status", "guild_id", "status"),
        Index("ix_job_status_model", "status", "model"),
        Index("ix_job_source_job_id", "source_job_id"),
        # The channels posted jobs are in (migration 0008): the web gallery reads them one index seek each.
        Index("ix_job_gallery_channel", "guild_id", "posted_channel_id", sqlite_where=text("status = 'posted'")),
        # Job ids never repeat (migration 0006): SQLite keeps the largest id it ever gave in sqlite_sequence, and
        # `bot.backup restore` keeps that mark across restoring an older backup.
        {"sqlite_autoincrement": True},
    )


class Image(Base):
    __tablename__ = "image"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("job.id", ondelete="CASCADE"))
    index: Mapped[int]
    seed: Mapped[int] = mapped_column(BigInteger)
    #: Path relative to the data folder (see bot.services.images.ImageStore).
    path: Mapped[str] = mapped_column(String(500))
    sha256: Mapped[str] = mapped_column(String(64))
    nsfw: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    job: Mapped[Job] = relationship(back_populates="images", lazy="raise")

    __table_args__ = (UniqueConstraint("job_id", "index"),)


class Ban(Base):
    __tablename__ = "ban"

    guild_id: Mapped[int] = mapped_column(Snowflake, primary_key=True, autoincrement=False)
    user_id: Mapped[int] = mapped_column(Snowflake, primary_key=True, autoincrement=False)
    reason: Mapped[str | None] = mapped_column(Text)
    banned_by: Mapped[int] = mapped_column(Snowflake)
    banned_at: Mapped[datetime] = mapped_column(default=utcnow)
    #: NULL = until lifted.
    until: Mapped[datetime | None]


class BlockedTerm(Base):
    __tablename__ = "blocked_term"

    guild_id: Mapped[int] = mapped_column(Snowflake, primary_key=True, autoincrement=False)
    #: The term normalised (see bot.services.moderation.normalize_term); what matching uses.
    term: Mapped[str] = mapped_column(String(200), primary_key=True)
    #: The term as the moderator typed it.
    original: Mapped[str] = mapped_column(String(200))
    added_by: Mapped[int] = mapped_column(Snowflake)
    added_at: Mapped[datetime] = mapped_column(default=utcnow)


class AuditLog(Base):
    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    guild_id: Mapped[int] = mapped_column(Snowflake)
    actor_id: Mapped[int] = mapped_column(Snowflake)
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str | None] = mapped_column(String(200))
    #: JSON object with the action's parameters.
    details: Mapped[str] = mapped_column(Text, default="{}")
    at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (Index("ix_audit_log_guild_id_at", "guild_id", "at"),)


class ServerStyle(Base):
    """A style of the guild's library, usable by every member (`/imagine style:`); kept by moderators."""

    __tablename__ = "server_style"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    guild_id: Mapped[int] = mapped_column(Snowflake)
    #: Lower-case letters, digits, `-` and `_` (bot.services.styles.NAME_PATTERN).
    name: Mapped[str] = mapped_column(String(32))
    #: The prompt template: `{prompt}` is replaced by the member's prompt.
    prompt: Mapped[str] = mapped_column(Text)
    negative: Mapped[str] = mapped_column(Text, default="", server_default="")
    #: Defaults the style brings (NULL = none): used when the member does not choose the value.
    model: Mapped[str | None] = mapped_column(String(200))
    sampler: Mapped[str | None] = mapped_column(String(40))
    guidance: Mapped[float | None] = mapped_column(Float)
    created_by: Mapped[int] = mapped_column(Snowflake)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    __table_args__ = (UniqueConstraint("guild_id", "name"),)


class PersonalStyle(Base):
    """A member's own style in one guild (`/style save`); only its owner sees and uses it."""

    __tablename__ = "personal_style"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    guild_id: Mapped[int] = mapped_column(Snowflake)
    user_id: Mapped[int] = mapped_column(Snowflake)
    name: Mapped[str] = mapped_column(String(32))
    prompt: Mapped[str] = mapped_column(Text)
    negative: Mapped[str] = mapped_column(Text, default="", server_default="")
    model: Mapped[str | None] = mapped_column(String(200))
    sampler: Mapped[str | None] = mapped_column(String(40))
    guidance: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    __table_args__ = (UniqueConstraint("guild_id", "user_id", "name"),)


class ShowcaseSetting(Base):
    """The ⭐ showcase of a guild: a result of the bot with `stars` ⭐ reactions is reposted to `channel_id`."""

    __tablename__ = "showcase_setting"

    guild_id: Mapped[int] = mapped_column(Snowflake, primary_key=True, autoincrement=False)
    channel_id: Mapped[int] = mapped_column(Snowflake)
    stars: Mapped[int]
    updated_by: Mapped[int] = mapped_column(Snowflake)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    __table_args__ = (CheckConstraint("stars >= 1", name="stars_positive"),)


class ShowcasePost(Base):
    """A job reposted to the showcase. The row is claimed (inserted) before the repost is sent, so that a job is
    reposted once whatever happens later; `message_id` is set once Discord accepted the repost."""

    __tablename__ = "showcase_post"

    job_id: Mapped[int] = mapped_column(ForeignKey("job.id", ondelete="CASCADE"), primary_key=True,
                                        autoincrement=False)
    guild_id: Mapped[int] = mapped_column(Snowflake)
    channel_id: Mapped[int] = mapped_column(Snowflake)
    #: The nonce the repost is sent with (made from the job id): Discord drops a second message with the same nonce.
    nonce: Mapped[str] = mapped_column(String(25))
    message_id: Mapped[int | None] = mapped_column(Snowflake)
    claimed_at: Mapped[datetime] = mapped_column(default=utcnow)
    posted_at: Mapped[datetime | None]


class ImagineDefaults:
    """The /imagine defaults a member or a channel may set (columns shared by `MemberSetting` and `ChannelDefault`).
    NULL = not set."""

    model: Mapped[str | None] = mapped_column(String(80))
    style: Mapped[str | None] = mapped_column(String(40))
    aspect: Mapped[str | None] = mapped_column(String(10))
    steps: Mapped[int | None]
    guidance: Mapped[float | None] = mapped_column(Float)
    count: Mapped[int | None]


class MemberSetting(ImagineDefaults, Base):
    """A member's defaults for /imagine in one guild (`/settings`; bot.services.preferences says how they rank).
    NULL = not set. `stealth`: their new jobs stay out of the web gallery and the ⭐ showcase."""

    __tablename__ = "member_setting"

    guild_id: Mapped[int] = mapped_column(Snowflake, primary_key=True, autoincrement=False)
    user_id: Mapped[int] = mapped_column(Snowflake, primary_key=True, autoincrement=False)
    stealth: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class ChannelDefault(ImagineDefaults, Base):
    """A channel's defaults for /imagine (`/mod channel-defaults`), used where neither the command nor the member's
    own defaults give a value. NULL = not set."""

    __tablename__ = "channel_default"

    guild_id: Mapped[int] = mapped_column(Snowflake, primary_key=True, autoincrement=False)
    channel_id: Mapped[int] = mapped_column(Snowflake, primary_key=True, autoincrement=False)
    updated_by: Mapped[int] = mapped_column(Snowflake)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
