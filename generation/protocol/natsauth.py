"""How the bot and the workers prove who they are to NATS, and how they check the server: `NatsAuth`.

Both sides read the same settings (the bot in `bot.config.Settings`, a worker in
`generation.worker.settings.WorkerSettings`), from the environment or `.env`, never from a command line:

- `NATS_CREDS`: a credentials file (a user JWT and its nkey seed, as `nsc` writes it);
- `NATS_NKEY_SEED`: a file holding an nkey seed (`SU...`);
- `NATS_USER` and `NATS_PASSWORD`: a user name and its password (what `python -m generation.protocol.natsconfig`
  writes for every identity);
- `NATS_TOKEN`: a shared token;
- `NATS_TLS_CA`: the certificate authority that signed the server's certificate (PEM); with it the connection is TLS
  from its first byte (`tls://` URLs, the server's `handshake_first`) and the server's certificate is checked against
  this CA alone;
- `NATS_TLS_CERT` and `NATS_TLS_KEY`: this side's client certificate and key, for a server that verifies clients
  (mutual TLS).

At most one way of logging in may be given, a user with its password, a certificate with its key; a file must
exist. `NatsAuth.check()` says what is wrong in a sentence that names the setting (`NatsAuthError`).
`connect_kwargs()` turns the settings into the keywords of `nats.connect` (an `ssl.SSLContext` built from the files,
TLS-first handshake, the credentials). The password and the token never appear in `repr()` or in a log line:
`describe()` names the settings in use, not their values.

With a user name the client's inbox is `_INBOX.<user>` instead of `_INBOX`: the server configuration the project
writes lets each identity subscribe to its own inbox only, so no identity can read the replies another one gets
(the bot's pulls from its results consumer, for one).

Torch-free and database-free: both the bot and the worker import it.
"""

from __future__ import annotations

import os
import re
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

__all__ = ["AUTH_SETTINGS", "TLS_SETTINGS", "NatsAuth", "NatsAuthError", "inbox_prefix", "safe_url"]

#: The settings of the ways to log in, in the order `describe()` names them.
AUTH_SETTINGS = ("NATS_CREDS", "NATS_NKEY_SEED", "NATS_USER", "NATS_PASSWORD", "NATS_TOKEN")
TLS_SETTINGS = ("NATS_TLS_CA", "NATS_TLS_CERT", "NATS_TLS_KEY")
#: A user name that can be a token of a subject (the inbox `_INBOX.<user>`).
_SUBJECT_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class NatsAuthError(ValueError):
    """The NATS credentials or TLS settings do not fit together, or a file they name cannot be read."""


def safe_url(url: str) -> str:
    """The URL without a password (or token) in it, for logs and error messages."""
    return re.sub(r"//[^@/]*@", "//***@", url)


def inbox_prefix(user: str | None) -> str:
    """The inbox prefix of a client that logs in as `user`: `_INBOX.<user>` for a name that can be a subject token,
    else NATS's default `_INBOX`."""
    return f"_INBOX.{user}" if user and _SUBJECT_TOKEN.match(user) else "_INBOX"


class NatsAuthSettings(Protocol):
    """The `nats_*` settings the bot and the worker share (pydantic `SecretStr` for the password and token)."""

    nats_creds: Path | None
    nats_nkey_seed: Path | None
    nats_user: str | None
    nats_password: Any
    nats_token: Any
    nats_tls_ca: Path | None
    nats_tls_cert: Path | None
    nats_tls_key: Path | None


@dataclass(frozen=True)
class NatsAuth:
    """The NATS credentials and TLS files of one side (bot or worker). Empty: no credentials, no TLS (the default
    for a server of one's own on 127.0.0.1, and for the tests)."""

    creds: Path | None = None
    nkey_seed: Path | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None

    def __post_init__(self) -> None:
        # Empty strings (an empty line in .env) count as unset; paths are kept as Path.
        for name in ("user", "password", "token"):
            value = getattr(self, name)
            if value is not None and not str(value).strip():
                object.__setattr__(self, name, None)
        for name in ("creds", "nkey_seed", "tls_ca", "tls_cert", "tls_key"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value) if str(value).strip() else None)

    @classmethod
    def of(cls, settings: NatsAuthSettings) -> NatsAuth:
        """The credentials and TLS files of a settings object with the `nats_*` fields (the bot's `Settings`, the
        worker's `WorkerSettings`): one reading of them for both sides."""
        def secret(value: Any) -> str | None:
            return value.get_secret_value() if value is not None else None

        return cls(
            creds=settings.nats_creds, nkey_seed=settings.nats_nkey_seed, user=settings.nats_user,
            password=secret(settings.nats_password), token=secret(settings.nats_token),
            tls_ca=settings.nats_tls_ca, tls_cert=settings.nats_tls_cert, tls_key=settings.nats_tls_key,
        )

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> NatsAuth:
        """The settings from environment variables (`os.environ` by default)."""
        env = os.environ if env is None else env
        return cls(
            creds=env.get("NATS_CREDS") or None, nkey_seed=env.get("NATS_NKEY_SEED") or None,
            user=env.get("NATS_USER") or None, password=env.get("NATS_PASSWORD") or None,
            token=env.get("NATS_TOKEN") or None, tls_ca=env.get("NATS_TLS_CA") or None,
            tls_cert=env.get("NATS_TLS_CERT") or None, tls_key=env.get("NATS_TLS_KEY") or None,
        )

    # --- what is set -----------------------------------------------------------------------------------------------
    @property
    def methods(self) -> tuple[str, ...]:
        """The ways to log in that are set: `creds`, `nkey`, `user`, `token`."""
        found = []
        if self.creds:
            found.append("creds")
        if self.nkey_seed:
            found.append("nkey")
        if self.user or self.password:
            found.append("user")
        if self.token:
            found.append("token")
        return tuple(found)

    @property
    def tls(self) -> bool:
        """Whether the connection uses TLS (a CA, or a client certificate, is set)."""
        return bool(self.tls_ca or self.tls_cert or self.tls_key)

    def __bool__(self) -> bool:
        return bool(self.methods) or self.tls

    def describe(self) -> str:
        """The settings in use, without a value: `NATS_USER=bot, NATS_PASSWORD, NATS_TLS_CA=/path/ca.pem`."""
        parts = []
        if self.creds:
            parts.append(f"NATS_CREDS={self.creds}")
        if self.nkey_seed:
            parts.append(f"NATS_NKEY_SEED={self.nkey_seed}")
        if self.user:
            parts.append(f"NATS_USER={self.user}")
        if self.password:
            parts.append("NATS_PASSWORD")
        if self.token:
            parts.append("NATS_TOKEN")
        for name, value in (("NATS_TLS_CA", self.tls_ca), ("NATS_TLS_CERT", self.tls_cert),
                            ("NATS_TLS_KEY", self.tls_key)):
            if value:
                parts.append(f"{name}={value}")
        return ", ".join(parts) or "no credentials"

    def login_settings(self) -> str:
        """The settings an operator should check when the server refuses this client's login."""
        if self.creds:
            return "NATS_CREDS"
        if self.nkey_seed:
            return "NATS_NKEY_SEED"
        if self.user or self.password:
            return "NATS_USER and NATS_PASSWORD"
        if self.token:
            return "NATS_TOKEN"
        if self.tls_cert:
            return "NATS_TLS_CERT and NATS_TLS_KEY (the server maps the client certificate to a user)"
        return "NATS_USER and NATS_PASSWORD (or NATS_CREDS, NATS_NKEY_SEED, NATS_TOKEN): none is set"

    def tls_settings(self) -> str:
        """The settings an operator should check when the TLS handshake fails."""
        if not self.tls:
            return "NATS_TLS_CA (the server requires TLS; with NATS_TLS_CA set the client speaks TLS)"
        names = ["NATS_TLS_CA (the CA that signed the server's certificate)"]
        names.append("NATS_TLS_CERT and NATS_TLS_KEY (the client certificate the server asks for)")
        return ", ".join(names)

    # --- checks ----------------------------------------------------------------------------------------------------
    def check(self, url: str | None = None) -> NatsAuth:
        """Raise `NatsAuthError` when the settings do not fit together (or with `url`), or a file is missing;
        returns self."""
        methods = self.methods
        if len(methods) > 1:
            given = [n for n, on in (("NATS_CREDS", self.creds), ("NATS_NKEY_SEED", self.nkey_seed),
                                     ("NATS_USER/NATS_PASSWORD", self.user or self.password),
                                     ("NATS_TOKEN", self.token)) if on]
            raise NatsAuthError(f"{' and '.join(given)} are all set; set one way of logging in to NATS")
        if self.user and not self.password:
            raise NatsAuthError("NATS_USER is set without NATS_PASSWORD; set both (or neither)")
        if self.password and not self.user:
            raise NatsAuthError("NATS_PASSWORD is set without NATS_USER; set both (or neither)")
        if self.user and not _SUBJECT_TOKEN.match(self.user):
            raise NatsAuthError(f"NATS_USER {self.user[:80]!r} has to be 1-64 letters, digits, '_' or '-'")
        if bool(self.tls_cert) != bool(self.tls_key):
            missing, given = ("NATS_TLS_KEY", "NATS_TLS_CERT") if self.tls_cert else ("NATS_TLS_CERT", "NATS_TLS_KEY")
            raise NatsAuthError(f"{given} is set without {missing}; a client certificate needs its key")
        for name, path in (("NATS_CREDS", self.creds), ("NATS_NKEY_SEED", self.nkey_seed),
                           ("NATS_TLS_CA", self.tls_ca), ("NATS_TLS_CERT", self.tls_cert),
                           ("NATS_TLS_KEY", self.tls_key)):
            if path is not None and not path.is_file():
                raise NatsAuthError(f"{name} names {str(path)!r}, which is not a file")
            if path is not None and not os.access(path, os.R_OK):
                raise NatsAuthError(f"{name} names {str(path)!r}, which this user cannot read")
        if url is not None:
            self._check_url(url)
        return self

    def _check_url(self, url: str) -> None:
        scheme = urlsplit(url.split(",")[0].strip()).scheme
        if self.tls and scheme != "tls":
            raise NatsAuthError(
                f"NATS_URL {safe_url(url)!r} starts with {scheme or 'no scheme'}:// but NATS_TLS_* is set; write "
                "tls://host:port (the client then speaks TLS from the first byte and never sends its credentials "
                "in the clear)")
        if scheme == "tls" and not self.tls_ca:
            raise NatsAuthError(f"NATS_URL {safe_url(url)!r} is a tls:// URL but NATS_TLS_CA is not set; set it to "
                                "the CA that signed the server's certificate")
        if "@" in url.split("//", 1)[-1].split("/", 1)[0] and self.methods:
            raise NatsAuthError(f"NATS_URL {safe_url(url)!r} holds credentials, and {self.login_settings()} "
                                "give some too; give them in one place")

    # --- nats.connect ------------------------------------------------------------------------------------------------
    def ssl_context(self) -> ssl.SSLContext | None:
        """A client TLS context that trusts `tls_ca` alone and presents `tls_cert`/`tls_key`; None without TLS."""
        if not self.tls:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.tls_ca) if self.tls_ca else None)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.tls_cert and self.tls_key:
            try:
                ctx.load_cert_chain(str(self.tls_cert), str(self.tls_key))
            except (ssl.SSLError, OSError) as e:
                raise NatsAuthError(f"NATS_TLS_CERT {str(self.tls_cert)!r} and NATS_TLS_KEY {str(self.tls_key)!r} "
                                    f"could not be loaded as a certificate and its key: {e}") from None
        return ctx

    def connect_kwargs(self, url: str | None = None) -> dict[str, Any]:
        """The keywords of `nats.connect` for these settings (checked first, see `check`)."""
        self.check(url)
        kw: dict[str, Any] = {}
        if self.creds:
            kw["user_credentials"] = str(self.creds)
        if self.nkey_seed:
            kw["nkeys_seed"] = str(self.nkey_seed)
        if self.user:
            kw["user"] = self.user
            kw["password"] = self.password
            kw["inbox_prefix"] = inbox_prefix(self.user)
        if self.token:
            kw["token"] = self.token
        ctx = self.ssl_context()
        if ctx is not None:
            kw["tls"] = ctx
            kw["tls_handshake_first"] = True
        return kw
