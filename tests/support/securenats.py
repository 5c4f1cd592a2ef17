"""A real nats-server configured by the project's own command (`python -m generation.protocol.natsconfig`): users
with passwords and per-role permissions, JetStream limits, TLS when asked. The credentials come from the `<name>.env`
files the command wrote, as an operator would copy them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from generation.protocol.natsauth import NatsAuth
from generation.protocol.natsconfig import CONFIG_NAME
from generation.protocol.natsconfig import main as natsconfig_main
from generation.protocol.natsserver import NatsServer, free_port


@dataclass
class ClientCert:
    cert: Path
    key: Path


@dataclass
class SecureNats:
    server: NatsServer
    conf_dir: Path
    url: str
    ca: Path | None = None
    certs: dict[str, ClientCert] = field(default_factory=dict)

    def env_file(self, name: str) -> dict[str, str]:
        text = (self.conf_dir / f"{name}.env").read_text()
        return dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))

    def password(self, name: str) -> str:
        return self.env_file(name)["NATS_PASSWORD"]

    def auth(self, name: str, *, password: str | None = None, cert: str | None = None) -> NatsAuth:
        """The login of identity `name` (its own password unless one is given), with TLS when the server has it
        (the client certificate of `cert`, default `name`'s, when one was made)."""
        tls: dict[str, Path] = {}
        if self.ca is not None:
            tls["tls_ca"] = self.ca
            chosen = self.certs.get(cert or name)
            if chosen is not None:
                tls.update(tls_cert=chosen.cert, tls_key=chosen.key)
        return NatsAuth(user=name, password=password if password is not None else self.password(name), **tls)

    def env(self, name: str) -> dict[str, str]:
        """The environment of a worker or bot process logging in as `name`."""
        out = {"NATS_URL": self.url, "NATS_USER": name, "NATS_PASSWORD": self.password(name)}
        a = self.auth(name)
        for key, value in (("NATS_TLS_CA", a.tls_ca), ("NATS_TLS_CERT", a.tls_cert), ("NATS_TLS_KEY", a.tls_key)):
            if value is not None:
                out[key] = str(value)
        return out

    def stop(self) -> None:
        self.server.stop()


def start_secure_nats(tmp: Path, *, workers: tuple[str, ...] = ("worker-1",), tls: bool = False,
                      max_store: str = "2GiB", prefix: str = "imagine") -> SecureNats:
    """Write a configuration with the command (bot, admin and `workers`; a CA, a server certificate for
    127.0.0.1/localhost and client certificates for every identity when `tls`), start nats-server with it."""
    tmp = Path(tmp)
    port = free_port()
    conf = tmp / "nats-conf"
    argv = ["--out", str(conf), "--host", "127.0.0.1", "--port", str(port), "--max-store", max_store,
            "--prefix", prefix, "--store-dir", str(tmp / "nats-store")]
    for w in workers:
        argv += ["--worker", w]
    ca_path = None
    certs: dict[str, ClientCert] = {}
    if tls:
        import trustme

        pki = tmp / "pki"
        pki.mkdir(mode=0o700, exist_ok=True)
        ca = trustme.CA()
        ca_path = pki / "ca.pem"
        ca.cert_pem.write_to_path(str(ca_path))
        server_cert = ca.issue_cert("127.0.0.1", "localhost")
        server_cert.cert_chain_pems[0].write_to_path(str(pki / "server.pem"))
        server_cert.private_key_pem.write_to_path(str(pki / "server-key.pem"))
        for name in ("bot", "admin", *workers):
            c = ca.issue_cert(f"{name}.imagine.test")
            certs[name] = ClientCert(pki / f"{name}.pem", pki / f"{name}-key.pem")
            c.cert_chain_pems[0].write_to_path(str(certs[name].cert))
            c.private_key_pem.write_to_path(str(certs[name].key))
        argv += ["--tls-cert", str(pki / "server.pem"), "--tls-key", str(pki / "server-key.pem"), "--tls-ca",
                 str(ca_path)]
    assert natsconfig_main(argv) == 0
    server = NatsServer(tmp / "nats-store", port=port, config_file=conf / CONFIG_NAME,
                        scheme="tls" if tls else "nats")
    server.start()
    return SecureNats(server, conf, server.url, ca_path, certs)
