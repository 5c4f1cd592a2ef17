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

Models: `--model` may be given several times, each `SOURCE` or `NAME=SOURCE` (`WORKER_MODELS` holds the same as a
comma-separated list), and `--models-file PATH` (`WORKER_MODELS_FILE`) names a file with one `[NAME=]SOURCE` per line
(blank lines and `#` comments are skipped; relative paths are taken from the working directory, like `--model`'s).
A worker serves the models of the flags (or `WORKER_MODELS`) first, then those of the file; with none of them it
serves the one model of `MODEL_PATH` (which the bot shares). The fake engine never reads `MODEL_PATH`: it serves the
models given as flags, variable or file, and when none is given, one default fake model (see `generation.worker.fake_engine`).

LoRAs and embeddings: `--lora-dir DIR` (`WORKER_LORA_DIR`) holds LoRA files, `--embedding-dir DIR`
(`WORKER_EMBEDDING_DIR`) textual-inversion embeddings; a file directly in the folder is offered to every model it
fits, one in a subfolder named like a model to that model only (see `generation.engine.loras`).

Editing from images: `--upscaler PATH` (repeatable; `WORKER_UPSCALERS`, comma-separated) names super-resolution
model files for upscale jobs (`generation.engine.upscalers`), `--captioner SOURCE` (`WORKER_CAPTIONER`) an
image-to-text model for `/describe` (`generation.engine.captioners`). Both are loaded once and shared by every model
the worker serves, and announced on every card.

The NATS URL may hold credentials (`nats://user:password@host:4222`); it is a `SecretStr`, shown as `**********` in
`repr()` and logs, and `nats_url.get_secret_value()` is called only where the connection is made.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from generation.protocol.natsauth import NatsAuth
from generation.protocol.queue import QueueConfig, model_token

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]

PROG = "python -m generation.worker"
ENV_PREFIX = "WORKER_"


#: A model name given as `NAME=SOURCE` (the rule of `generation.protocol.cards.ModelCard.name`).
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._ -]{0,79}$")
#: A comment in a models file: from a `#` at the start of a line or after a space to the end of the line.
COMMENT = re.compile(r"(^|\s)#.*$")


@dataclass(frozen=True)
class ModelSpec:
    """One model to serve as the operator wrote it: a source (a diffusers folder, a `.safetensors`/`.ckpt` file or a
    Hugging Face id `org/name[@revision]`; the engine resolves it) and, with `NAME=SOURCE`, the name to serve it as
    (else the name comes from the model's card)."""

    source: str
    name: str | None = None

    @classmethod
    def parse(cls, text: str) -> ModelSpec:
        """`SOURCE` or `NAME=SOURCE`. Text before the first `=` is a name unless it holds a path separator (a
        source that itself contains `=` needs a `NAME=` in front)."""
        text = text.strip()
        name, sep, source = text.partition("=")
        if sep and not name.strip():
            raise ValueError(f"model {text!r} has no name before its '='")
        if not sep or "/" in name or "\\" in name:
            name, source = "", text
        name, source = name.strip(), source.strip()
        if not source:
            raise ValueError(f"model {text!r} names no source (a folder, a .safetensors/.ckpt file or org/name)")
        if name and not MODEL_NAME.match(name):
            raise ValueError(f"model name {name!r} has to be 1-80 letters, digits, spaces, '.', '_' or '-'")
        return cls(source, name or None)

    @property
    def label(self) -> str:
        """How logs name the model before its card is known: its given name, else its source."""
        return self.name or self.source

    def __str__(self) -> str:
        return f"{self.name}={self.source}" if self.name else self.source


def read_models_file(path: Path) -> list[ModelSpec]:
    """The models of a models file: one `[NAME=]SOURCE` per line; blank lines and `#` comments are skipped."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise ValueError(f"the models file could not be read ({e.strerror or e})") from None
    specs = []
    for number, line in enumerate(lines, 1):
        text = COMMENT.sub("", line).strip()
        if not text:
            continue
        try:
            specs.append(ModelSpec.parse(text))
        except ValueError as e:
            raise ValueError(f"{path}, line {number}: {e}") from None
    return specs


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
    # How the worker logs in to NATS (generation.protocol.natsauth), with the bot's names: the password and the token
    # come from the environment or `.env` only, never from a flag (a command line is visible to every local user).
    #: NATS credentials file (a user JWT and its nkey seed).
    nats_creds: Path | None = Field(None, validation_alias="NATS_CREDS")
    #: File holding an nkey seed.
    nats_nkey_seed: Path | None = Field(None, validation_alias="NATS_NKEY_SEED")
    #: NATS user name (with NATS_PASSWORD).
    nats_user: str | None = Field(None, validation_alias="NATS_USER")
    #: NATS password of NATS_USER (environment or .env only).
    nats_password: SecretStr | None = Field(None, validation_alias="NATS_PASSWORD")
    #: NATS token (environment or .env only).
    nats_token: SecretStr | None = Field(None, validation_alias="NATS_TOKEN")
    #: CA certificate (PEM) of the server's certificate; with it the connection is TLS (tls:// URLs).
    nats_tls_ca: Path | None = Field(None, validation_alias="NATS_TLS_CA")
    #: This worker's client certificate (PEM) for a server that verifies clients (mutual TLS), and its key.
    nats_tls_cert: Path | None = Field(None, validation_alias="NATS_TLS_CERT")
    nats_tls_key: Path | None = Field(None, validation_alias="NATS_TLS_KEY")

    # models and engine
    #: The model served when no other is given (`--model`, `WORKER_MODELS`, `--models-file`): a diffusers folder,
    #: a single checkpoint file or a Hugging Face id. The bot's setting too; the fake engine ignores it.
    model: str = Field("generation/models/default", min_length=1, validation_alias="MODEL_PATH")
    #: Models to serve, each `SOURCE` or `NAME=SOURCE`; the first also takes the jobs that name no model.
    models: Annotated[tuple[str, ...], NoDecode] = ()
    #: A file with one `[NAME=]SOURCE` per line (`#` comments), served after `models`.
    models_file: Path | None = None
    #: Most models held in memory at once; a job for another one loads it, evicting the least recently used.
    max_loaded: int = Field(1, ge=1)
    #: Torch device. Unset: CUDA when present, else CPU.
    device: str | None = None
    #: Torch CPU threads. Unset (or 0): torch's own choice.
    threads: int | None = Field(None, ge=1)
    #: UNet and VAE weights in channels-last memory format (faster convolutions on GPUs).
    channels_last: bool = False
    #: torch.compile the UNet and the VAE decode (GPU; each new image or batch size compiles once, a minute or more).
    compile: bool = False
    #: A folder of LoRA files (`.safetensors`): shared ones directly in it, a model's own in a subfolder of its name.
    lora_dir: Path | None = None
    #: A folder of textual-inversion embeddings (`.safetensors`, `.pt`, `.bin`), laid out like `lora_dir`.
    embedding_dir: Path | None = None
    #: Super-resolution model files (ESRGAN, Real-ESRGAN, SwinIR, ...: `.pth`, `.safetensors`) run by upscale jobs
    #: before their refine pass; every model's card lists them. `WORKER_UPSCALERS` is comma-separated.
    upscalers: Annotated[tuple[Path, ...], NoDecode] = ()
    #: An image-to-text model (a folder or a Hugging Face id) that writes `/describe`'s prompt suggestions for the
    #: models that have no captioner of their own (the shapes model has its attribute classifier).
    captioner: str | None = None
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

    @field_validator("models", mode="before")
    @classmethod
    def _split_models(cls, v: object) -> object:
        """`WORKER_MODELS` is comma-separated; the flags arrive as a list, one item per `--model`."""
        if isinstance(v, str):
            v = v.split(",")
        if isinstance(v, list | tuple):
            return tuple(item.strip() for item in v if not isinstance(item, str) or item.strip())
        return v

    @field_validator("models")
    @classmethod
    def _models_parse(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for text in v:
            ModelSpec.parse(text)
        return v

    @field_validator("models_file")
    @classmethod
    def _models_file_reads(cls, v: Path | None) -> Path | None:
        if v is not None:
            read_models_file(v)
        return v

    @model_validator(mode="after")
    def _nats_auth_fits(self) -> WorkerSettings:
        self.nats_auth().check(self.nats_url.get_secret_value())
        return self

    def nats_auth(self) -> NatsAuth:
        """The NATS credentials and TLS files of the settings."""
        return NatsAuth.of(self)

    @model_validator(mode="after")
    def _model_names_differ(self) -> WorkerSettings:
        seen: dict[str, str] = {}
        for spec in self.given_models():
            if spec.name is None:
                continue
            key = model_token(spec.name)  # jobs find a model by its token: "My Model" and "my-model" collide
            if key in seen:
                raise ValueError(f"two models share the name {spec.name!r} ({seen[key]} and {spec}); give each its own")
            seen[key] = str(spec)
        return self

    @field_validator("upscalers", mode="before")
    @classmethod
    def _split_upscalers(cls, v: object) -> object:
        """`WORKER_UPSCALERS` is comma-separated; the flags arrive as a list, one item per `--upscaler`."""
        if isinstance(v, str):
            v = v.split(",")
        if isinstance(v, list | tuple):
            return tuple(item.strip() if isinstance(item, str) else item for item in v
                         if not isinstance(item, str) or item.strip())
        return v

    @field_validator("upscalers")
    @classmethod
    def _upscaler_files(cls, v: tuple[Path, ...]) -> tuple[Path, ...]:
        for path in v:
            if not path.is_file():
                raise ValueError(f"upscaler {str(path)!r} is not a file (give a .pth or .safetensors file)")
            if not path.name.lower().endswith((".pth", ".pt", ".safetensors", ".ckpt")):
                raise ValueError(f"upscaler {str(path)!r} has to end in .pth, .pt, .safetensors or .ckpt")
        return v

    @field_validator("lora_dir", "embedding_dir")
    @classmethod
    def _is_a_folder(cls, v: Path | None) -> Path | None:
        if v is not None and not v.is_dir():
            raise ValueError(f"{str(v)!r} is not a folder")
        return v

    @field_validator("threads", mode="before")
    @classmethod
    def _zero_threads_is_unset(cls, v: object) -> object:
        return None if v == 0 or (isinstance(v, str) and v.strip() == "0") else v

    @classmethod
    def env_name(cls, field: str) -> str:
        """The environment variable of a setting (`max_batch` -> `WORKER_MAX_BATCH`, `nats_url` -> `NATS_URL`)."""
        alias = cls.model_fields[field].validation_alias
        return alias if isinstance(alias, str) else f"{ENV_PREFIX}{field}".upper()

    def given_models(self) -> tuple[ModelSpec, ...]:
        """The models named by `--model` (or `WORKER_MODELS`) and then by the models file, in that order."""
        specs = [ModelSpec.parse(text) for text in self.models]
        if self.models_file is not None:
            specs += read_models_file(self.models_file)
        return tuple(specs)

    def model_specs(self) -> tuple[ModelSpec, ...]:
        """The models to serve: those given, else the one of `MODEL_PATH` (the default model)."""
        return self.given_models() or (ModelSpec.parse(self.model),)

    def queue_config(self) -> QueueConfig:
        return QueueConfig(prefix=self.prefix, ack_wait=self.ack_wait, max_deliver=self.max_deliver)


#: The flags: (option, setting, help, argparse keywords). The help gets the setting's environment variable appended.
FLAGS: tuple[tuple[str, str, str, dict[str, Any]], ...] = (
    ("--nats-url", "nats_url", "NATS server with JetStream; default nats://127.0.0.1:4222", {}),
    # Files and a user name only: the password (NATS_PASSWORD) and the token (NATS_TOKEN) have no flag.
    ("--nats-creds", "nats_creds", "NATS credentials file", {"metavar": "FILE"}),
    ("--nats-nkey-seed", "nats_nkey_seed", "file holding an nkey seed", {"metavar": "FILE"}),
    ("--nats-user", "nats_user", "NATS user name; its password comes from NATS_PASSWORD (environment or .env)", {}),
    ("--nats-tls-ca", "nats_tls_ca", "CA (PEM) of the server's certificate; the URL is then tls://", {"metavar": "FILE"}),
    ("--nats-tls-cert", "nats_tls_cert", "client certificate (PEM) for mutual TLS", {"metavar": "FILE"}),
    ("--nats-tls-key", "nats_tls_key", "key (PEM) of the client certificate", {"metavar": "FILE"}),
    ("--model", "models", "a model to serve, SOURCE or NAME=SOURCE (a diffusers folder, a .safetensors/.ckpt file or a "
     "Hugging Face id org/name[@revision]); repeat it to serve several, the first also takes jobs that name no model. "
     "Default: MODEL_PATH, else generation/models/default", {"action": "append", "metavar": "[NAME=]SOURCE"}),
    ("--models-file", "models_file", "a file with one [NAME=]SOURCE per line (# comments), served after the --model "
     "ones", {"metavar": "PATH"}),
    ("--max-loaded", "max_loaded", "most models in memory at once; a job for another loads it, evicting the least "
     "recently used; default 1", {"metavar": "N"}),
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
    ("--lora-dir", "lora_dir", "a folder of LoRA files (.safetensors): those in it are offered to every model they "
     "fit, those in a subfolder named like a model to that model only", {"metavar": "DIR"}),
    ("--embedding-dir", "embedding_dir", "a folder of textual-inversion embeddings (.safetensors, .pt, .bin), laid "
     "out like --lora-dir; each is used by its file name as a word of the prompt", {"metavar": "DIR"}),
    ("--upscaler", "upscalers", "a super-resolution model file (.pth/.safetensors of ESRGAN, Real-ESRGAN, SwinIR, "
     "...) for upscale jobs, run before the refine pass; repeat it for several", {"action": "append",
                                                                                  "metavar": "PATH"}),
    ("--captioner", "captioner", "an image-to-text model (a folder or a Hugging Face id) that writes /describe's "
     "prompt suggestions; without one only the shapes model describes images", {"metavar": "SOURCE"}),
    ("--name", "name", "worker name in logs and announcements; default host name + GPU or pid", {}),
    ("--no-default", "serve_default", "take only jobs that name one of this worker's models",
     {"action": "store_false"}),
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
        msg = str(err.get("ctx", {}).get("error", err["msg"])) if err["type"] == "value_error" else err["msg"]
        if not err["loc"]:  # a rule across settings (two models of the same name)
            lines.append(f"settings: {msg}")
            continue
        key = str(err["loc"][0])
        field = by_env.get(key, key)
        where = [flags[field]] if field in flags else []
        if field in WorkerSettings.model_fields:
            where.append(f"env {WorkerSettings.env_name(field)}")
        # The NATS URL may hold a password: never repeat it, nor the password or the token.
        secret = field in ("nats_url", "nats_password", "nats_token")
        value = "" if err["type"] == "missing" or secret else f" (got {err.get('input')!r})"
        lines.append(f"setting `{field}` ({', '.join(where)}): {msg}{value}")
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
