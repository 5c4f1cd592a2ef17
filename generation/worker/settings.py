"""Settings of a worker, read from the command line, the environment and a `.env` file (pydantic-settings).

A worker is started by hand (one per GPU, `python -m generation.worker --model ...`), by the bot as its local worker
(flags for the queue, `WORKER_*` variables passed through from the bot's environment) and by tests and benchmarks
(flags only). So every setting has a flag and an environment variable, and they are read in this order, first wins:

1. command-line flags (`--nats-url`, `--max-batch`, ...; `python -m generation.worker --help` lists them);
2. environment variables: `NATS_URL`, `MODEL_PATH`, `QUEUE_ACK_WAIT`, `QUEUE_MAX_DELIVER`, `QUEUE_PREFIX` and
   `LOG_LEVEL` share their names with the bot; the worker's own settings are `WORKER_<SETTING>` (`WORKER_NAME`,
   `WORKER_THREADS`, `WORKER_MAX_BATCH`, ...). Empty values count as unset;
3. a `.env` file in the working directory (the bot's, see `.env.example`; keys the worker does not know are ignored);
4. the defaults below.

argparse keeps the flags exactly as they always were (names, `--no-default`, `--help`); it only collects the flags
that were given, as strings, and pydantic checks and converts every value whichever source it came from, so a bad
value is refused the same way and named the same way (flag and variable) wherever it was set.

The NATS URL may hold credentials (`nats://user:password@host:4222`); it is a `SecretStr`, shown as `**********` in
`repr()` and logs, and `nats_url.get_secret_value()` is called only where the connection is made.
"""

from __future__ import annotations

import argparse
import os
import socket
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from generation.protocol.queue import QueueConfig

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]

PROG = "python -m generation.worker"
ENV_PREFIX = "WORKER_"


def default_name() -> str:
    """`<host>-gpu<N>` for a worker pinned to a GPU with CUDA_VISIBLE_DEVICES, else `<host>-<pid>`."""
    gpu = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    return f"{socket.gethostname()}-{'gpu' + gpu if gpu else os.getpid()}"


class WorkerSettings(BaseSettings):
    """All settings of a worker. Build with `parse_args(argv)` (flags, then environment, `.env`, defaults) or
    `WorkerSettings(**overrides)` (environment, `.env` and defaults under the overrides)."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",  # the `.env` file is shared with the bot
        env_ignore_empty=True,
        populate_by_name=True,  # WorkerSettings(nats_url=...) as well as the environment's NATS_URL
    )

    # queue
    #: NATS server with JetStream. May hold credentials, hence secret.
    nats_url: SecretStr = Field(SecretStr("nats://127.0.0.1:4222"), validation_alias="NATS_URL")
    #: Prefix of the subjects, streams and buckets (the bot must use the same).
    prefix: str = Field("imagine", pattern=r"^[A-Za-z0-9_-]+$", validation_alias="QUEUE_PREFIX")
    #: Seconds of silence (no ack, no heartbeat) before the server hands a job to another worker.
    ack_wait: float = Field(10.0, gt=0, validation_alias="QUEUE_ACK_WAIT")
    #: Deliveries of one job before it fails (and is refunded by the bot).
    max_deliver: int = Field(3, ge=1, validation_alias="QUEUE_MAX_DELIVER")

    # model and engine
    #: Diffusers folder or single checkpoint file of the model to serve.
    model: str = Field("generation/models/default", min_length=1, validation_alias="MODEL_PATH")
    #: Torch device. Unset: CUDA when present, else CPU.
    device: str | None = None
    #: Torch CPU threads. Unset (or 0): torch's own choice.
    threads: int | None = Field(None, ge=1)
    #: UNet and VAE weights in channels-last memory format (faster convolutions on GPUs).
    channels_last: bool = False
    #: torch.compile the UNet and the VAE decode (GPU; each new image or batch size compiles once, a minute or more).
    compile: bool = False
    #: Seconds per denoising step of the fake engine, which then runs instead of a model (tests, benchmarks).
    fake_engine: float | None = Field(None, ge=0)
    #: Fake engine: random-noise PNGs (about 1.5 MB at 720x720) instead of small flat ones.
    fake_noise: bool = False
    #: Fake engine: the model name it serves.
    fake_name: str = Field("fake", min_length=1)

    # worker
    #: Name in logs and announcements. Unset: host name and GPU (or pid).
    name: str = Field(default_factory=default_name, min_length=1)
    #: Also take jobs that name no model (`--no-default` turns it off: only jobs naming this worker's model).
    serve_default: bool = True
    #: Most same-shape jobs run as one batch.
    max_batch: int = Field(4, ge=1)
    #: On SIGTERM, seconds the running job may take to finish before it is handed back.
    drain_timeout: float = Field(30.0, ge=0)
    #: Level of the worker's log lines.
    log_level: LogLevel = Field("INFO", validation_alias="LOG_LEVEL")

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, v: object) -> object:
        return v.upper() if isinstance(v, str) else v

    @field_validator("threads", mode="before")
    @classmethod
    def _zero_threads_is_unset(cls, v: object) -> object:
        return None if v == 0 or (isinstance(v, str) and v.strip() == "0") else v

    @classmethod
    def env_name(cls, field: str) -> str:
        """The environment variable of a setting (`max_batch` -> `WORKER_MAX_BATCH`, `nats_url` -> `NATS_URL`)."""
        alias = cls.model_fields[field].validation_alias
        return alias if isinstance(alias, str) else f"{ENV_PREFIX}{field}".upper()

    def queue_config(self) -> QueueConfig:
        return QueueConfig(prefix=self.prefix, ack_wait=self.ack_wait, max_deliver=self.max_deliver)


#: The flags: (option, setting, help, argparse keywords). The help gets the setting's environment variable appended.
FLAGS: tuple[tuple[str, str, str, dict[str, Any]], ...] = (
    ("--nats-url", "nats_url", "NATS server with JetStream; default nats://127.0.0.1:4222", {}),
    ("--model", "model", "diffusers folder or single checkpoint file; default generation/models/default", {}),
    ("--fake-engine", "fake_engine", "run the fake engine instead of a model (tests, benchmarks)",
     {"metavar": "SECONDS_PER_STEP"}),
    ("--fake-noise", "fake_noise", "fake engine: random-noise PNGs (about 1.5 MB at 720x720)",
     {"action": "store_true"}),
    ("--fake-name", "fake_name", "fake engine: model name to serve; default fake", {}),
    ("--device", "device", "torch device; default CUDA when present, else CPU", {}),
    ("--threads", "threads", "torch CPU threads; default torch's own choice. On a machine whose cores also run the "
     "bot or other work, 1 is often fastest", {}),
    ("--channels-last", "channels_last", "UNet and VAE weights in channels-last memory format (faster convolutions "
     "on GPUs)", {"action": "store_true"}),
    ("--compile", "compile", "torch.compile the UNet and the VAE decode (GPU; each new image or batch size compiles "
     "once, a minute or more)", {"action": "store_true"}),
    ("--name", "name", "worker name in logs and announcements; default host name + GPU or pid", {}),
    ("--no-default", "serve_default", "take only jobs that name this worker's model", {"action": "store_false"}),
    ("--max-batch", "max_batch", "most same-shape jobs run as one batch; default 4", {}),
    ("--ack-wait", "ack_wait", "seconds of silence before a job goes to another worker; default 10", {}),
    ("--max-deliver", "max_deliver", "deliveries of one job before it fails; default 3", {}),
    ("--drain-timeout", "drain_timeout", "on SIGTERM, seconds the running job may take to finish before it is "
     "handed back; default 30", {}),
    ("--prefix", "prefix", "subject/stream prefix; default imagine", {}),
    ("--log-level", "log_level", "DEBUG, INFO, WARNING, ERROR or CRITICAL; default INFO", {}),
)


def build_parser() -> argparse.ArgumentParser:
    """The worker's flags. Each stores the raw string (or True/False for a switch) under the setting's name, and
    only when given, so that unset flags leave the environment, `.env` and the defaults to decide."""
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Run a generation worker. Flags win over environment variables, which win over a .env file.",
        argument_default=argparse.SUPPRESS,
    )
    for option, field, text, kw in FLAGS:
        p.add_argument(option, dest=field, help=f"{text} (env {WorkerSettings.env_name(field)})", **kw)
    return p


def describe_error(e: ValidationError) -> str:
    """One line per refused setting, naming its flag and environment variable, what was wrong and the value."""
    flags = {field: option for option, field, _, _ in FLAGS}
    by_env = {WorkerSettings.env_name(f): f for f in WorkerSettings.model_fields}
    lines = []
    for err in e.errors(include_url=False):
        key = str(err["loc"][0]) if err["loc"] else ""
        field = by_env.get(key, key)
        where = [flags[field]] if field in flags else []
        if field in WorkerSettings.model_fields:
            where.append(f"env {WorkerSettings.env_name(field)}")
        # The NATS URL may hold a password: never repeat it.
        value = "" if err["type"] == "missing" or field == "nats_url" else f" (got {err.get('input')!r})"
        lines.append(f"setting `{field}` ({', '.join(where)}): {err['msg']}{value}")
    return "invalid settings:\n  " + "\n  ".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> WorkerSettings:
    """The settings from the flags in `argv` (default: sys.argv), then the environment, `.env` and the defaults.
    A bad value (from any source) exits with status 2 and a message naming the setting, like a bad flag does."""
    parser = build_parser()
    given = vars(parser.parse_args(argv))
    try:
        return WorkerSettings(**given)
    except ValidationError as e:
        parser.error(describe_error(e))
