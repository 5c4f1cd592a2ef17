"""Write a ready-to-run nats-server configuration for the queue, with one identity per role and least privilege.

    python -m generation.protocol.natsconfig --out nats-conf --worker gpu1 --worker gpu2 \\
        --host 0.0.0.0 --port 4222 --tls-cert server.pem --tls-key server-key.pem --tls-ca ca.pem --max-store 20GiB

writes, in `--out` (created with mode 0700):

- `nats-server.conf`: listen address, JetStream (`store_dir`, `max_file_store`), TLS when asked (the client
  certificate is verified when `--tls-ca` is given, and TLS may start before the server's greeting:
  `handshake_first`), and an `authorization` block with one user per identity, its password stored as a bcrypt hash,
  and the permissions of its role;
- one credentials file per identity, `<name>.env` (mode 0600): `NATS_USER`, `NATS_PASSWORD` (random,
  `secrets.token_urlsafe`) and the `NATS_URL` / `NATS_TLS_*` lines to fill in, ready to be copied into the `.env` of
  the bot or of a worker.

Identities and what each may do (`role_permissions`; prefix `imagine` below):

- `bot`: publish jobs (`imagine.jobs.>`), cancels (`imagine.cancel.*`, the `imagine-cancel` bucket) and the workers'
  ping, put and delete the source images of variations in the object store; read outcomes through its own consumer
  of the results stream, progress and the workers' announcements; create and update (never delete or purge) the
  queue's streams, buckets and consumers; remove a cancelled job's message.
- a worker (`--worker NAME` each, or `--workers N`: `worker-1` ... `worker-N`): pull and ack the shared job
  consumers (create them for its models), read cancels and the stored outcome of a job it is given, write result
  images to the object store (and read a variation's source image), publish outcomes, progress and announcements.
  It cannot publish a job, read the results consumer, create, update, delete or purge a stream.
- `admin`: everything (for the operator's `nats` CLI: `nats --user admin --password ... stream ls`).

Each identity subscribes only to its own inbox (`_INBOX.<name>.>`, see `generation.protocol.natsauth`), and only
the admin may publish to an inbox: nobody reads another's replies or answers in its place.

The same writer makes the configuration of the embedded server (`bot.dispatch.local`) at every start of the bot.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from generation.protocol.natsauth import inbox_prefix
from generation.protocol.queue import QueueConfig

__all__ = [
    "DEFAULT_MAX_STORE",
    "CONFIG_NAME",
    "Identity",
    "NatsConfig",
    "TlsFiles",
    "main",
    "parse_size",
    "role_permissions",
    "write_config",
]

CONFIG_NAME = "nats-server.conf"
#: Bytes the JetStream file store may take when nothing else is said (NATS_MAX_STORE, --max-store): 2 GiB.
DEFAULT_MAX_STORE = 2 * 1024**3
#: A name of an identity: it is a user name and a token of its inbox subject.
NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
ROLES = ("bot", "worker", "admin")
#: Work factor of the bcrypt hashes. The passwords are 256 random bits, far beyond any guessing whatever the factor:
#: the hash only keeps them out of the file, and a low factor keeps the server's check at each connection cheap.
BCRYPT_ROUNDS = 8
_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2, "mib": 1024**2,
          "g": 1000**3, "gb": 1000**3, "gib": 1024**3, "t": 1000**4, "tb": 1000**4, "tib": 1024**4}


def parse_size(text: str | int) -> int:
    """Bytes from `2147483648`, `2GiB`, `500MB`, `1.5G` (k, M, G, T are powers of 1000, KiB, MiB, GiB, TiB of
    1024). Raises ValueError naming the value and what is allowed."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", str(text))
        unit = m.group(2).lower() if m else ""
        if not m or unit not in _UNITS:
            raise ValueError(f"size {str(text)[:40]!r} is not a number of bytes like 2147483648, 500MB or 2GiB")
        value = int(float(m.group(1)) * _UNITS[unit])
    if value < 1024 * 1024:
        raise ValueError(f"size {text!r} is below 1 MiB; JetStream needs more room than that")
    return value


@dataclass(frozen=True)
class Identity:
    """A NATS user: its name, its role (`bot`, `worker` or `admin`) and its password (never shown by repr)."""

    name: str
    role: str
    password: str = field(default_factory=lambda: secrets.token_urlsafe(32), repr=False)

    def __post_init__(self) -> None:
        if not NAME.match(self.name):
            raise ValueError(f"identity name {self.name[:80]!r} has to be 1-64 letters, digits, '_' or '-'")
        if self.role not in ROLES:
            raise ValueError(f"role {self.role!r} is not one of {', '.join(ROLES)}")

    def bcrypt_hash(self) -> str:
        import bcrypt

        return bcrypt.hashpw(self.password.encode(), bcrypt.gensalt(BCRYPT_ROUNDS, prefix=b"2a")).decode()

    def env(self) -> dict[str, str]:
        """What a client needs to log in as this identity (the environment of the local worker, for one)."""
        return {"NATS_USER": self.name, "NATS_PASSWORD": self.password}


@dataclass(frozen=True)
class TlsFiles:
    """The server's certificate and key; with `ca`, client certificates signed by it are required (mutual TLS)."""

    cert: Path
    key: Path
    ca: Path | None = None


def _api(*parts: str) -> str:
    return "$JS.API." + ".".join(parts)


def role_permissions(role: str, name: str, config: QueueConfig | None = None) -> dict[str, dict[str, list[str]]]:
    """The `permissions` block of an identity: `{"publish": {"allow": [...], "deny": [...]}, "subscribe": {...}}`.
    Everything not allowed is refused by the server; the denies name the dangerous calls once more, so that a later
    widening of an allow cannot let them through."""
    c = config or QueueConfig()
    p = c.prefix
    jobs, results = c.jobs_stream, c.results_stream
    images, cancels = f"OBJ_{c.images_bucket}", f"KV_{c.cancel_bucket}"
    inbox = f"{inbox_prefix(name)}.>"
    if role == "admin":
        return {"publish": {"allow": [">"]}, "subscribe": {"allow": [">"]}}
    # Reading streams: their info, a message by sequence or subject (direct or through the API), the stream names.
    read = [_api("INFO"), _api("STREAM", "NAMES")]
    for stream in (jobs, results, images, cancels):
        read += [_api("STREAM", "INFO", stream), _api("STREAM", "MSG", "GET", stream),
                 _api("DIRECT", "GET", stream), _api("DIRECT", "GET", stream, ">")]
    # Reading an object: an ordered consumer over its chunks (ephemeral, flow controlled).
    read_objects = [_api("CONSUMER", "CREATE", images), _api("CONSUMER", "CREATE", images, ">"),
                    f"$JS.FC.{images}.>"]
    # The shared job consumers: create (or update) them, pull from them.
    job_consumers = [_api("CONSUMER", "CREATE", jobs, ">"), _api("CONSUMER", "DURABLE", "CREATE", jobs, "*"),
                     _api("CONSUMER", "INFO", jobs, "*")]
    never = [_api("STREAM", "DELETE", ">"), _api("CONSUMER", "DELETE", ">"), _api("ACCOUNT", ">"),
             _api("SERVER", ">"), _api("META", ">"), _api("STREAM", "PEER", ">"), _api("STREAM", "LEADER", ">"),
             _api("STREAM", "SNAPSHOT", ">"), _api("STREAM", "RESTORE", ">"), "_INBOX.>"]
    if role == "bot":
        publish = [
            f"{p}.jobs.>", f"{p}.cancel.*", c.ping_subject, f"$KV.{c.cancel_bucket}.>", f"$O.{c.images_bucket}.>",
            *read, *read_objects, *job_consumers,
            *(_api("STREAM", verb, s) for verb in ("CREATE", "UPDATE") for s in (jobs, results, images, cancels)),
            _api("STREAM", "MSG", "DELETE", jobs),
            # Deleting an object (and replacing one) purges its chunks: the object store's stream only.
            _api("STREAM", "PURGE", images),
            _api("CONSUMER", "CREATE", results), _api("CONSUMER", "CREATE", results, ">"),
            _api("CONSUMER", "DURABLE", "CREATE", results, "*"), _api("CONSUMER", "INFO", results, "*"),
            _api("CONSUMER", "MSG", "NEXT", results, "*"), f"$JS.ACK.{results}.>",
        ]
        deny = [*never, *(_api("STREAM", "PURGE", s) for s in (jobs, results, cancels))]
        subscribe = [inbox, c.progress_subject("*"), c.worker_subject("*")]
        sub_deny = [f"{p}.jobs.>", f"{p}.results.>"]
    elif role == "worker":
        publish = [
            c.result_subject("*"), c.progress_subject("*"), c.worker_subject("*"), f"$O.{c.images_bucket}.>",
            *read,
            *read_objects, *job_consumers, _api("CONSUMER", "MSG", "NEXT", jobs, "*"), f"$JS.ACK.{jobs}.>",
        ]
        deny = [*never, f"{p}.jobs.>", f"{p}.cancel.>", c.ping_subject, f"$KV.{c.cancel_bucket}.>",
                _api("STREAM", "CREATE", ">"), _api("STREAM", "UPDATE", ">"), _api("STREAM", "PURGE", ">"),
                _api("STREAM", "MSG", "DELETE", ">"), _api("CONSUMER", "CREATE", results),
                _api("CONSUMER", "CREATE", results, ">"), _api("CONSUMER", "DURABLE", "CREATE", results, ">"),
                _api("CONSUMER", "MSG", "NEXT", results, ">"), f"$JS.ACK.{results}.>"]
        subscribe = [inbox, c.cancel_subject("*"), c.ping_subject]
        sub_deny = [f"{p}.jobs.>", f"{p}.results.>", f"{p}.progress.>", f"{p}.workers.>"]
    else:
        raise ValueError(f"role {role!r} is not one of {', '.join(ROLES)}")
    return {"publish": {"allow": list(dict.fromkeys(publish)), "deny": list(dict.fromkeys(deny))},
            "subscribe": {"allow": subscribe, "deny": sub_deny}}


def _q(value: object) -> str:
    """A value in the configuration's syntax: a quoted string (JSON escapes, which nats-server reads) or a number."""
    return str(value) if isinstance(value, int) else json.dumps(str(value))


@dataclass(frozen=True)
class NatsConfig:
    """A nats-server configuration: where it listens, its store and its limit, TLS, and the identities."""

    identities: tuple[Identity, ...]
    store_dir: Path
    host: str = "127.0.0.1"
    port: int = 4222
    max_store: int = DEFAULT_MAX_STORE
    tls: TlsFiles | None = None
    queue: QueueConfig = field(default_factory=QueueConfig)

    def identity(self, name: str) -> Identity:
        for ident in self.identities:
            if ident.name == name:
                return ident
        raise KeyError(name)

    def of_role(self, role: str) -> list[Identity]:
        return [i for i in self.identities if i.role == role]

    def render(self) -> str:
        """The text of `nats-server.conf`."""
        lines = [
            f"# nats-server configuration of the imaginebot queue, written {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by",
            "# python -m generation.protocol.natsconfig. Start it with: nats-server -c " + CONFIG_NAME,
            "# Passwords are bcrypt hashes; the passwords themselves are in the <identity>.env files beside this one.",
            f"host: {_q(self.host)}",
            f"port: {int(self.port)}",
            "jetstream {",
            f"  store_dir: {_q(self.store_dir.resolve())}",
            f"  max_file_store: {int(self.max_store)}",
            "}",
        ]
        if self.tls is not None:
            lines += ["tls {", f"  cert_file: {_q(self.tls.cert.resolve())}", f"  key_file: {_q(self.tls.key.resolve())}"]
            if self.tls.ca is not None:
                lines += [f"  ca_file: {_q(self.tls.ca.resolve())}", "  verify: true"]
            # The bot and the workers start TLS before the server's greeting (nothing in the clear, nothing to strip);
            # a client that waits for the greeting (the `nats` CLI without --tlsfirst) gets it after 500 ms.
            lines += ['  handshake_first: "500ms"', "  timeout: 5", "}"]
        lines += ["authorization {", "  users = ["]
        for ident in self.identities:
            perms = role_permissions(ident.role, ident.name, self.queue)
            lines.append(f"    # {ident.name}: role {ident.role}")
            lines.append(f"    {{user: {_q(ident.name)}, password: {_q(ident.bcrypt_hash())}, permissions: {{")
            for kind in ("publish", "subscribe"):
                lines.append(f"      {kind}: {{")
                for verdict, subjects in perms[kind].items():
                    lines.append(f"        {verdict}: [{', '.join(_q(s) for s in subjects)}]")
                lines.append("      }")
            lines.append("    }}")
        lines += ["  ]", "}", ""]
        return "\n".join(lines)

    def env_file(self, ident: Identity, url: str | None = None) -> str:
        """The text of `<name>.env`: the lines a client of this identity puts in its `.env`."""
        scheme = "tls" if self.tls is not None else "nats"
        where = url or f"{scheme}://<this server's host name>:{self.port}"
        lines = [
            f"# NATS identity {ident.name!r} (role {ident.role}) of the imaginebot queue, written "
            f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC.",
            "# Keep it private (mode 0600). Copy these lines into the .env of the "
            + {"bot": "bot", "worker": "worker (on its machine)", "admin": "admin's nats CLI context"}[ident.role] + ".",
            ("" if url else "# ") + f"NATS_URL={where}",
            f"NATS_USER={ident.name}",
            f"NATS_PASSWORD={ident.password}",
        ]
        if self.queue.prefix != QueueConfig().prefix:
            lines.append(f"QUEUE_PREFIX={self.queue.prefix}")
        if self.tls is not None:
            lines.append("# The CA that signed the server's certificate (copy it to this machine):")
            lines.append(f"NATS_TLS_CA={self.tls.ca.resolve() if self.tls.ca else '/path/to/ca.pem'}")
            if self.tls.ca is not None:
                lines.append("# This identity's client certificate and key, signed by that CA (the server verifies them):")
                lines.append(f"NATS_TLS_CERT=/path/to/{ident.name}.pem")
                lines.append(f"NATS_TLS_KEY=/path/to/{ident.name}-key.pem")
        return "\n".join(lines) + "\n"

    def write(self, out: Path, url: str | None = None, env_for: Sequence[str] | None = None) -> dict[str, Path]:
        """Write `nats-server.conf` and a `<name>.env` for each identity (or for those named in `env_for`) into
        `out` (mode 0700, files 0600); returns the paths by name (`"config"` for the configuration)."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(out, 0o700)
        written = {"config": _write_private(out / CONFIG_NAME, self.render())}
        for ident in self.identities:
            if env_for is None or ident.name in env_for:
                written[ident.name] = self.write_env(out / f"{ident.name}.env", ident, url)
        return written

    def write_env(self, path: Path, ident: Identity, url: str | None = None) -> Path:
        """Write the credentials file of `ident` (mode 0600)."""
        return _write_private(Path(path), self.env_file(ident, url))


def _write_private(path: Path, text: str) -> Path:
    """Write `text` to `path` with mode 0600 from the start (never readable by others, not even for a moment)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)
    os.chmod(path, 0o600)
    return path


def identities(*, workers: int | None = None, worker_names: Sequence[str] = (), admin: bool = True,
               bot: str = "bot") -> tuple[Identity, ...]:
    """The bot, the admin (unless `admin=False`) and the workers: `worker_names`, or `worker-1` ... `worker-<N>`
    (one when neither is given). Raises ValueError for a bad or repeated name."""
    names = list(worker_names) or [f"worker-{i}" for i in range(1, (workers if workers is not None else 1) + 1)]
    if workers is not None and worker_names:
        raise ValueError("give --workers N or --worker NAME, not both")
    if not names:
        raise ValueError("at least one worker identity is needed")
    out = [Identity(bot, "bot"), *(Identity(n, "worker") for n in names)]
    if admin:
        out.append(Identity("admin", "admin"))
    seen: set[str] = set()
    for ident in out:
        if ident.name in seen:
            raise ValueError(f"identity name {ident.name!r} is given twice; each identity needs its own name")
        seen.add(ident.name)
    return tuple(out)


def write_config(out: Path, *, workers: int | None = None, worker_names: Sequence[str] = (), host: str = "127.0.0.1",
                 port: int = 4222, store_dir: Path | None = None, max_store: int = DEFAULT_MAX_STORE,
                 tls: TlsFiles | None = None, queue: QueueConfig | None = None, admin: bool = True,
                 url: str | None = None) -> tuple[NatsConfig, dict[str, Path]]:
    """Make the identities, write the configuration and the credentials files into `out`; (config, paths)."""
    config = NatsConfig(
        identities(workers=workers, worker_names=worker_names, admin=admin),
        store_dir=Path(store_dir) if store_dir else Path(out) / "jetstream", host=host, port=port,
        max_store=max_store, tls=tls, queue=queue or QueueConfig(),
    )
    return config, config.write(Path(out), url)


# --- the command ----------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m generation.protocol.natsconfig",
        description="Write a nats-server configuration for the imaginebot queue with a bot, an admin and worker "
                    "identities (random passwords, least-privilege permissions) and one credentials file for each.")
    p.add_argument("--out", type=Path, required=True, help="folder to write into (created with mode 0700)")
    who = p.add_mutually_exclusive_group()
    who.add_argument("--workers", type=int, metavar="N", help="N worker identities worker-1 ... worker-N (default 1)")
    who.add_argument("--worker", action="append", default=[], metavar="NAME",
                     help="a worker identity of this name; repeat it for more")
    p.add_argument("--host", default="0.0.0.0", help="address the server listens on (default 0.0.0.0: every one)")
    p.add_argument("--port", type=int, default=4222, help="port the server listens on (default 4222)")
    p.add_argument("--url", default=None, help="the URL the bot and the workers use to reach the server, written "
                   "into every credentials file, e.g. tls://queue.example.org:4222")
    p.add_argument("--store-dir", type=Path, default=None, help="JetStream store (default OUT/jetstream)")
    p.add_argument("--max-store", default=str(DEFAULT_MAX_STORE), metavar="SIZE",
                   help="most bytes the JetStream store may take on disk, e.g. 20GiB (default 2GiB)")
    p.add_argument("--tls-cert", type=Path, default=None, help="the server's certificate (PEM)")
    p.add_argument("--tls-key", type=Path, default=None, help="the server's private key (PEM)")
    p.add_argument("--tls-ca", type=Path, default=None,
                   help="CA whose client certificates the server requires (mutual TLS); also the CA clients check")
    p.add_argument("--prefix", default=QueueConfig().prefix, help="subject/stream prefix (default imagine)")
    p.add_argument("--force", action="store_true", help="overwrite a configuration already in --out")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.workers is not None and args.workers < 1:
            raise ValueError(f"--workers {args.workers}: give 1 or more")
        if not 0 < args.port < 65536:
            raise ValueError(f"--port {args.port} is not a TCP port (1-65535)")
        if not re.fullmatch(r"[A-Za-z0-9_-]+", args.prefix):
            raise ValueError(f"--prefix {args.prefix!r} has to be letters, digits, '_' or '-'")
        max_store = parse_size(args.max_store)
        tls = None
        if args.tls_cert or args.tls_key or args.tls_ca:
            if not (args.tls_cert and args.tls_key):
                raise ValueError("--tls-cert and --tls-key go together (the server's certificate and its key)")
            for flag, path in (("--tls-cert", args.tls_cert), ("--tls-key", args.tls_key), ("--tls-ca", args.tls_ca)):
                if path is not None and not path.is_file():
                    raise ValueError(f"{flag} {str(path)!r} is not a file")
            tls = TlsFiles(args.tls_cert, args.tls_key, args.tls_ca)
        if (args.out / CONFIG_NAME).exists() and not args.force:
            raise ValueError(f"{args.out / CONFIG_NAME} exists; pass --force to replace it (and every password)")
        config, paths = write_config(args.out, workers=args.workers, worker_names=args.worker, host=args.host,
                                     port=args.port, store_dir=args.store_dir, max_store=max_store, tls=tls,
                                     queue=QueueConfig(prefix=args.prefix), url=args.url)
    except ValueError as e:
        parser.error(str(e))
    print(f"wrote {paths['config']} (JetStream store {config.store_dir.resolve()}, at most {max_store} bytes"
          f"{', TLS' + (' with client certificates' if tls and tls.ca else '') if tls else ''})")
    for ident in config.identities:
        print(f"  {ident.role:<6} {ident.name:<20} {paths[ident.name]}")
    print(f"start the server: nats-server -c {paths['config']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
