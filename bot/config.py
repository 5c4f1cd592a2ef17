"""Settings of the bot, read from the environment and from a `.env` file (pydantic-settings).

Every setting is documented in `.env.example` at the repository root. Environment variables use the field name in
upper case, without a prefix: `DISCORD_TOKEN`, `DATABASE_URL`, `DATA_DIR`, ...

The token is a `SecretStr`: it shows as `**********` in `repr()`, in logs and in tracebacks; call
`settings.discord_token.get_secret_value()` at the one place that needs the real value.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from generation.protocol.contract import MAX_SIDE, MAX_STEPS
from generation.protocol.natsauth import NatsAuth
from generation.protocol.natsconfig import DEFAULT_MAX_STORE, parse_size

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]

SQLITE_PREFIX = "sqlite+aiosqlite:///"


class Settings(BaseSettings):
    """All settings of the bot. Build with `get_settings()` (cached) or `Settings(**overrides)` in tests."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore", env_ignore_empty=True)

    #: Bot token from the Discord developer portal. Unset: the bot cannot log in (migrations still run).
    discord_token: SecretStr | None = None
    #: Folder for the database, the generated images and other state.
    data_dir: Path = Path("data")
    #: SQLAlchemy URL of the database. Unset: `sqlite+aiosqlite:///<data_dir>/bot.db`.
    database_url: str = ""
    #: NATS server of the job queue. Unset: the bot starts an embedded nats-server with JetStream under data_dir.
    nats_url: str | None = None
    #: Port of the embedded nats-server (0: 4222 when free, else any free port). Ignored when nats_url is set.
    nats_port: int = Field(0, ge=0, le=65535)
    # How the bot logs in to the NATS server of NATS_URL (generation.protocol.natsauth): one of a credentials file, an
    # nkey seed file, a user and its password, or a token; and TLS: the CA of the server's certificate, and the bot's
    # client certificate and key when the server verifies clients. Ignored with the embedded server, which makes its
    # own credentials at every start. `python -m generation.protocol.natsconfig` writes them for a server of one's own.
    #: NATS credentials file (a user JWT and its nkey seed).
    nats_creds: Path | None = None
    #: File holding an nkey seed.
    nats_nkey_seed: Path | None = None
    #: NATS user name (with NATS_PASSWORD).
    nats_user: str | None = None
    #: NATS password of NATS_USER.
    nats_password: SecretStr | None = None
    #: NATS token.
    nats_token: SecretStr | None = None
    #: CA certificate (PEM) that signed the server's certificate; with it the connection is TLS (tls:// URLs).
    nats_tls_ca: Path | None = None
    #: The bot's client certificate (PEM), for a server that verifies clients (mutual TLS); with NATS_TLS_KEY.
    nats_tls_cert: Path | None = None
    #: The key of NATS_TLS_CERT (PEM).
    nats_tls_key: Path | None = None
    #: Most bytes the embedded nats-server's JetStream store may take on disk (a number, or 500MB, 2GiB...); the
    #: queue's streams are fitted into it. Ignored when nats_url is set (the server's own max_file_store counts).
    nats_max_store: int = Field(DEFAULT_MAX_STORE, ge=64 * 1024 * 1024)
    #: Start one local worker process beside the bot. Unset: yes when the queue is embedded, no with NATS_URL.
    local_worker: bool | None = None
    #: Extra command-line arguments of the local worker, e.g. "--threads 1 --max-batch 2".
    worker_args: str = ""
    #: Folder (diffusers format) or single checkpoint file of the model the local worker loads (bot.dispatch.local
    #: passes it as `--model`). The bot itself reads no model files: it learns each served model, its limits and
    #: defaults from the card its worker announces.
    model_path: str = "generation/models/default"
    #: Guild where slash commands are synced instantly while developing. Unset: commands are synced globally.
    dev_guild_id: int | None = None
    #: Role whose members may use the moderator commands (besides members with Manage Server). Unset: none.
    mod_role_id: int | None = None
    #: Base URL of Discord's HTTP API (point it at a fake server in tests).
    discord_api_base: str = "https://discord.com/api/v10"
    #: Gateway (websocket) URL of Discord.
    discord_gateway_url: str = "wss://gateway.discord.gg/"

    # Quota defaults of a guild that has not configured its own (see bot.services.quota). A credit is one image at
    # the target model's default size and steps (bot.services.costs); budgets take up to two decimals.
    #: Credits a member may spend per rolling day in the fast lane. DEFAULT_IMAGES_PER_DAY (before credits) is read
    #: as the same number of credits.
    default_credits_per_day: float = Field(
        40, ge=0, le=10_000_000, validation_alias=AliasChoices("default_credits_per_day", "default_images_per_day")
    )
    #: Credits a member may spend per rolling day in the relax lane once the fast budget cannot pay a job (served
    #: only when no fast job waits). Unset: 4 × the fast budget. 0: no relax lane.
    default_relax_credits_per_day: float | None = Field(None, ge=0, le=10_000_000)
    #: Jobs a member may have queued or running at once.
    default_max_concurrent: int = Field(2, ge=1)
    #: Most denoising steps a member may ask for.
    default_max_steps: int = Field(50, ge=1, le=MAX_STEPS)
    #: Longest image side (pixels) a member may ask for.
    default_max_side: int = Field(1024, ge=64, le=MAX_SIDE)
    #: Seconds a member waits between two new jobs in a guild (/imagine and the U, V, 🔄, ✏️ buttons). 0: no wait.
    imagine_cooldown_seconds: float = Field(3.0, ge=0, le=3600)
    #: Most jobs one /imagine may start through `{a, b}` permutations (bot.services.permutations); more is refused.
    permutation_max_jobs: int = Field(8, ge=1, le=64)
    #: Seconds the Confirm / Cancel buttons of a permutation /imagine wait before it lapses (nothing queued).
    permutation_confirm_seconds: float = Field(120.0, ge=10, le=840)

    # Operator limits: what the bot's operator allows, whatever a server's moderators set (see bot.services.quota).
    #: Guilds (servers) the bot may stay in. Empty: any. The bot leaves every other guild when it joins it and at
    #: start, and refuses commands from one. In the environment: comma-separated ids.
    allowed_guild_ids: Annotated[list[int], NoDecode] = Field(default_factory=list)
    #: Most fast credits per day any member may be given (`/mod quota set` refuses more; larger limits are clamped).
    #: MAX_IMAGES_PER_DAY_CAP (before credits) is read as the same number of credits.
    max_credits_per_day_cap: float = Field(
        1000, ge=0, le=10_000_000, validation_alias=AliasChoices("max_credits_per_day_cap", "max_images_per_day_cap")
    )
    #: Most relax credits per day any member may be given.
    max_relax_credits_per_day_cap: float = Field(4000, ge=0, le=10_000_000)
    #: Most jobs at once any member may be given (`/mod quota set` refuses more; larger limits are clamped).
    max_concurrent_cap: int = Field(8, ge=1)
    #: Most jobs one guild may have queued or running; a new job beyond it is refused (nothing is charged).
    max_queued_per_guild: int = Field(200, ge=1)

    # Data that stays bounded (see bot.services.retention).
    #: Days the image files of a finished job are kept; then a sweeper removes them (the job's row and parameters
    #: stay, so 🔄 and ✏️ still draw it again). 0: keep them forever.
    image_retention_days: int = Field(0, ge=0, le=36500)
    #: Free space (MiB) on the data folder's disk below which the log warns (once per crossing) and /mod stats says
    #: so. 0: never warn.
    disk_warn_free_mb: int = Field(2048, ge=0)

    # The web gallery (bot.gallery): served by the bot's own process, only while GALLERY_PORT is set.
    #: TCP port of the web gallery. Unset: no gallery. 0: a free port the system picks (logged at start).
    gallery_port: int | None = Field(None, ge=0, le=65535)
    #: Address the gallery listens on. The default serves this machine only: put a reverse proxy in front of it
    #: (with GALLERY_PUBLIC_URL) rather than listening on every address.
    gallery_host: str = Field("127.0.0.1", min_length=1, max_length=253)
    #: The address people open the gallery at, e.g. https://art.example.org/gallery when a reverse proxy forwards
    #: that prefix (stripped) to GALLERY_HOST:GALLERY_PORT. Its path prefixes every link of the pages; /mod gallery
    #: answers with links under it. Unset: links from the root ("/"), none in Discord.
    gallery_public_url: str | None = None

    #: Level of the bot's log lines.
    log_level: LogLevel = "INFO"
    #: File the bot appends its event loop's worst lag to, one JSON line a second (benchmarks). Unset: not measured.
    loop_lag_log: Path | None = None

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, v: object) -> object:
        return v.upper() if isinstance(v, str) else v

    @field_validator("allowed_guild_ids", mode="before")
    @classmethod
    def _split_guild_ids(cls, v: object) -> object:
        if isinstance(v, str):
            return [part.strip() for part in v.split(",") if part.strip()]
        if isinstance(v, int) and not isinstance(v, bool):
            return [v]
        return v

    @field_validator("nats_max_store", mode="before")
    @classmethod
    def _parse_store_size(cls, v: object) -> object:
        return parse_size(v) if isinstance(v, str) else v

    @model_validator(mode="after")
    def _nats_auth_fits(self) -> Settings:
        if self.nats_url:
            self.nats_auth().check(self.nats_url)
        return self

    def nats_auth(self) -> NatsAuth:
        """The NATS credentials and TLS files of the settings (for NATS_URL; the embedded server makes its own)."""
        return NatsAuth.of(self)

    @field_validator("gallery_public_url", mode="before")
    @classmethod
    def _check_gallery_url(cls, v: object) -> object:
        if not isinstance(v, str):
            return v
        text = v.strip()
        if not text:
            return None
        from urllib.parse import urlsplit

        parts = urlsplit(text)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
            raise ValueError(f"GALLERY_PUBLIC_URL is {text[:100]!r}, but it has to be an http:// or https:// address "
                             "without ?query or #fragment, e.g. https://art.example.org/gallery")
        return text.rstrip("/")

    @field_validator("discord_token", mode="before")
    @classmethod
    def _empty_token_is_none(cls, v: object) -> object:
        return None if isinstance(v, str) and not v.strip() else v

    @model_validator(mode="after")
    def _default_database_url(self) -> Settings:
        if not self.database_url:
            self.database_url = f"{SQLITE_PREFIX}{(self.data_dir / 'bot.db').as_posix()}"
        return self

    @property
    def images_dir(self) -> Path:
        """Where `ImageStore` writes generated images."""
        return self.data_dir / "images"

    def guild_allowed(self, guild_id: int | None) -> bool:
        """Whether the bot may serve guild `guild_id` (ALLOWED_GUILD_IDS empty: every guild)."""
        return not self.allowed_guild_ids or guild_id in self.allowed_guild_ids

    @property
    def relax_credits_per_day(self) -> float:
        """The default relax budget in credits (DEFAULT_RELAX_CREDITS_PER_DAY, unset: 4 × the fast budget)."""
        if self.default_relax_credits_per_day is None:
            return 4 * self.default_credits_per_day
        return self.default_relax_credits_per_day

    def quota_caps(self):  # -> bot.services.quota.Caps
        """The operator's caps on quota limits as a `Caps` value (budgets in units). The operator's own defaults are
        what they allow: a DEFAULT_CREDITS_PER_DAY, DEFAULT_RELAX_CREDITS_PER_DAY or DEFAULT_MAX_CONCURRENT above its
        cap raises the cap to it."""
        from bot.services.quota import Caps, credits_to_units

        return Caps(
            images_per_day=credits_to_units(max(self.max_credits_per_day_cap, self.default_credits_per_day)),
            relax_per_day=credits_to_units(max(self.max_relax_credits_per_day_cap, self.relax_credits_per_day)),
            max_concurrent=max(self.max_concurrent_cap, self.default_max_concurrent),
        )

    def default_limits(self):  # -> bot.services.quota.Limits (imported lazily to keep this module light)
        """The quota defaults as a `Limits` value (budgets in units)."""
        from bot.services.quota import Limits, credits_to_units

        return Limits(
            images_per_day=credits_to_units(self.default_credits_per_day),
            max_concurrent=self.default_max_concurrent,
            max_steps=self.default_max_steps,
            max_side=self.default_max_side,
            relax_per_day=credits_to_units(self.relax_credits_per_day),
        )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (read once). Tests build `Settings(...)` directly instead."""
    return Settings()
