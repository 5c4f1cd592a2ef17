"""`python -m generation.protocol.natsconfig`: a nats-server configuration with one identity per role, bcrypt-hashed
passwords, per-role permissions and JetStream limits, and one private credentials file per identity. What each
identity may do against a real server is shown in tests/hardening/test_attacker.py."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from generation.protocol.natsauth import NatsAuth
from generation.protocol.natsconfig import (
    CONFIG_NAME,
    DEFAULT_MAX_STORE,
    Identity,
    main,
    parse_size,
    role_permissions,
    write_config,
)
from generation.protocol.natsserver import NatsServer, free_port
from generation.protocol.queue import JobQueue, QueueConfig
from tests.support.natsutil import REPO


def read_env(path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if line and not line.startswith("#"))


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_the_command_writes_private_files_that_nats_server_runs(tmp_path):
    out = tmp_path / "conf"
    port = free_port()
    done = subprocess.run(
        [sys.executable, "-m", "generation.protocol.natsconfig", "--out", str(out), "--worker", "gpu1", "--worker",
         "gpu2", "--host", "127.0.0.1", "--port", str(port), "--max-store", "100MiB",
         "--url", f"nats://127.0.0.1:{port}"],
        cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    names = sorted(p.name for p in out.iterdir())
    assert names == ["admin.env", "bot.env", "gpu1.env", "gpu2.env", CONFIG_NAME]
    assert mode(out) == 0o700 and all(mode(out / n) == 0o600 for n in names)
    conf = (out / CONFIG_NAME).read_text()
    assert "max_file_store: 104857600" in conf and conf.count('password: "$2a$') == 4
    envs = {n: read_env(out / f"{n}.env") for n in ("bot", "gpu1", "gpu2", "admin")}
    for name, env in envs.items():
        assert env["NATS_USER"] == name and env["NATS_URL"] == f"nats://127.0.0.1:{port}"
        assert len(env["NATS_PASSWORD"]) >= 40 and env["NATS_PASSWORD"] not in conf  # only its hash is there
    assert len({env["NATS_PASSWORD"] for env in envs.values()}) == 4
    with NatsServer(tmp_path / "unused", port=port, config_file=out / CONFIG_NAME) as server:
        log = server.log_file.read_text()
        assert "Max Storage:     100.00 MB" in log, log
        assert str(out / "jetstream") in log  # the file's store, not the one given to NatsServer

        async def login(name: str) -> None:
            env = envs[name]
            q = await JobQueue.connect(env["NATS_URL"], name=name, setup=False, connect_timeout=5,
                                       auth=NatsAuth(user=env["NATS_USER"], password=env["NATS_PASSWORD"]))
            assert q.nc.is_connected
            await q.close()

        import asyncio

        for name in envs:
            asyncio.run(login(name))


def test_tls_settings_are_written_with_client_verification(tmp_path):
    cert, key, ca = (tmp_path / n for n in ("srv.pem", "srv-key.pem", "ca.pem"))
    for p in (cert, key, ca):
        p.write_text("pem")
    assert main(["--out", str(tmp_path / "c"), "--tls-cert", str(cert), "--tls-key", str(key), "--tls-ca", str(ca)]) == 0
    conf = (tmp_path / "c" / CONFIG_NAME).read_text()
    assert f'cert_file: "{cert}"' in conf and f'ca_file: "{ca}"' in conf and "verify: true" in conf
    assert 'handshake_first: "500ms"' in conf
    worker = (tmp_path / "c" / "worker-1.env").read_text()
    assert "# NATS_URL=tls://" in worker and f"NATS_TLS_CA={ca}" in worker and "NATS_TLS_CERT=" in worker


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--max-store", "lots"], "size 'lots' is not a number of bytes like 2147483648, 500MB or 2GiB"),
        (["--max-store", "10"], "is below 1 MiB"),
        (["--tls-cert", "x.pem"], "--tls-cert and --tls-key go together"),
        (["--worker", "gpu.1"], "identity name 'gpu.1' has to be 1-64 letters"),
        (["--worker", "a", "--worker", "a"], "identity name 'a' is given twice"),
        (["--worker", "bot"], "identity name 'bot' is given twice"),
        (["--workers", "0"], "--workers 0: give 1 or more"),
        (["--workers", "2", "--worker", "a"], "not allowed with argument"),
        (["--port", "70000"], "--port 70000 is not a TCP port"),
        (["--prefix", "a.b"], "--prefix 'a.b' has to be letters"),
    ],
)
def test_bad_arguments_exit_naming_them(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        main(["--out", str(tmp_path / "c"), *argv])
    assert e.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "c" / CONFIG_NAME).exists()


def test_an_existing_configuration_is_replaced_only_with_force(tmp_path, capsys):
    out = tmp_path / "c"
    assert main(["--out", str(out), "--workers", "2"]) == 0
    first = read_env(out / "worker-2.env")["NATS_PASSWORD"]
    with pytest.raises(SystemExit):
        main(["--out", str(out)])
    assert "pass --force" in capsys.readouterr().err
    assert main(["--out", str(out), "--workers", "2", "--force"]) == 0
    assert read_env(out / "worker-2.env")["NATS_PASSWORD"] != first


@pytest.mark.parametrize(("text", "size"), [("2147483648", 2**31), ("2GiB", 2**31), ("500MB", 500 * 10**6),
                                            ("1.5G", 15 * 10**8), ("64 MiB", 64 * 2**20), (3 * 2**20, 3 * 2**20)])
def test_sizes(text, size):
    assert parse_size(text) == size


def test_the_default_store_fits_the_queues_limits():
    c = QueueConfig()
    assert c.reserved_bytes <= 0.9 * DEFAULT_MAX_STORE and c.fitted(DEFAULT_MAX_STORE) is c
    small = c.fitted(512 * 2**20)
    assert small.reserved_bytes <= 0.9 * 512 * 2**20
    # shrunk in proportion: images keep four times the room of the jobs
    assert small.images_max_bytes == pytest.approx(4 * small.jobs_max_bytes, rel=0.01)


def test_the_roles_allow_what_each_needs_and_deny_the_rest():
    bot = role_permissions("bot", "bot")
    worker = role_permissions("worker", "gpu1")
    admin = role_permissions("admin", "admin")
    assert admin == {"publish": {"allow": [">"]}, "subscribe": {"allow": [">"]}}
    # The bot: publishes jobs, reads its results consumer, never deletes or purges a stream of the queue.
    assert {"imagine.jobs.>", "$JS.API.CONSUMER.MSG.NEXT.IMAGINE_RESULTS.*"} <= set(bot["publish"]["allow"])
    assert {"$JS.API.STREAM.DELETE.>", "$JS.API.STREAM.PURGE.IMAGINE_JOBS",
            "$JS.API.STREAM.PURGE.IMAGINE_RESULTS"} <= set(bot["publish"]["deny"])
    assert not any("DELETE" in s and "MSG" not in s for s in bot["publish"]["allow"])
    # A worker: pulls and acks the job consumers, publishes outcomes; no jobs, no results consumer, no streams.
    assert {"$JS.API.CONSUMER.MSG.NEXT.IMAGINE_JOBS.*", "$JS.ACK.IMAGINE_JOBS.>",
            "imagine.results.*"} <= set(worker["publish"]["allow"])
    assert {"imagine.jobs.>", "$JS.API.STREAM.CREATE.>", "$JS.API.STREAM.DELETE.>", "$JS.API.STREAM.PURGE.>",
            "$JS.API.CONSUMER.MSG.NEXT.IMAGINE_RESULTS.>"} <= set(worker["publish"]["deny"])
    assert not any(s.startswith(("$JS.API.STREAM.CREATE", "$JS.API.STREAM.UPDATE", "imagine.jobs"))
                   for s in worker["publish"]["allow"])
    # Each subscribes to its own inbox only.
    assert "_INBOX.gpu1.>" in worker["subscribe"]["allow"] and "_INBOX.bot.>" in bot["subscribe"]["allow"]
    assert "_INBOX.>" in worker["publish"]["deny"] and "_INBOX.>" in bot["publish"]["deny"]


def test_an_identity_never_shows_its_password():
    ident = Identity("gpu1", "worker")
    assert ident.password not in repr(ident) and len(ident.password) >= 40
    assert ident.bcrypt_hash().startswith("$2a$")


def test_write_config_makes_a_bot_an_admin_and_workers(tmp_path):
    config, paths = write_config(tmp_path / "c", workers=3)
    assert [(i.name, i.role) for i in config.identities] == [
        ("bot", "bot"), ("worker-1", "worker"), ("worker-2", "worker"), ("worker-3", "worker"), ("admin", "admin")]
    assert set(paths) == {"config", "bot", "worker-1", "worker-2", "worker-3", "admin"}
