"""Two machines' worth of processes over mutual TLS: a nats-server configured by `python -m generation.protocol.natsconfig
--tls-cert --tls-key --tls-ca` (certificates made here with trustme: a CA, the server's for 127.0.0.1 and localhost,
one client certificate per identity), the bot's dispatcher in this process and a real worker process, each with its
identity and its client certificate. A client without a client certificate, with a certificate of another CA, or
without TLS is refused; the real bot refused at start stops with one clear line."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import trustme

from generation.protocol.natsauth import AUTH_SETTINGS, TLS_SETTINGS, NatsAuth
from generation.protocol.queue import ConnectRefused, JobQueue
from tests.support.faultkit import DispatchWorld
from tests.support.natsutil import REPO
from tests.support.securenats import start_secure_nats

pytestmark = pytest.mark.slow


@pytest.fixture
def tls_nats(tmp_path):
    s = start_secure_nats(tmp_path, tls=True)
    try:
        yield s
    finally:
        s.stop()


async def test_bot_and_worker_finish_jobs_over_mutual_tls(tmp_path, migrated_template, tls_nats):
    assert tls_nats.url.startswith("tls://127.0.0.1:")
    world = DispatchWorld(tmp_path, migrated_template, tls_nats.url, auth=tls_nats.auth("bot"))
    try:
        await world.start()
        env = {k: v for k, v in tls_nats.env("worker-1").items() if k != "NATS_URL"}
        assert {"NATS_TLS_CA", "NATS_TLS_CERT", "NATS_TLS_KEY"} <= set(env)
        worker = world.worker("--fake-engine", "0.02", env=env)
        ids = await world.submit(2, steps=4)
        tally = await world.settle(timeout=90)
        assert sorted(tally.delivered) == sorted(ids), f"{tally}\n{world.logs()}"
        assert "refused" not in worker.log() and world.dispatcher.queue.denied == []
    finally:
        await world.close()


async def test_clients_without_the_right_certificate_or_without_tls_are_refused(tmp_path, tls_nats):
    other = trustme.CA().issue_cert("bot.imagine.test")
    other.cert_chain_pems[0].write_to_path(str(tmp_path / "other.pem"))
    other.private_key_pem.write_to_path(str(tmp_path / "other-key.pem"))
    password = tls_nats.password("bot")
    tries = {
        "no client certificate": (tls_nats.url, NatsAuth(user="bot", password=password, tls_ca=tls_nats.ca)),
        "a client certificate of another CA": (tls_nats.url, NatsAuth(
            user="bot", password=password, tls_ca=tls_nats.ca, tls_cert=tmp_path / "other.pem",
            tls_key=tmp_path / "other-key.pem")),
        "no TLS at all": (tls_nats.url.replace("tls://", "nats://"), NatsAuth(user="bot", password=password)),
    }
    for what, (url, auth) in tries.items():
        t0 = time.monotonic()
        with pytest.raises(ConnectRefused) as e:
            await JobQueue.connect(url, name=what, auth=auth, connect_timeout=20.0)
        assert time.monotonic() - t0 < 5.0, what
        assert "TLS with NATS at" in str(e.value) and "check NATS_TLS_CA" in str(e.value), (what, str(e.value))
        assert password not in str(e.value)
    # The server's certificate is checked as well: a client trusting another CA refuses the server.
    ca = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(ca))
    with pytest.raises(ConnectRefused, match="certificate"):
        await JobQueue.connect(tls_nats.url, auth=NatsAuth(user="bot", password=password, tls_ca=ca,
                                                          tls_cert=tls_nats.certs["bot"].cert,
                                                          tls_key=tls_nats.certs["bot"].key), connect_timeout=20.0)
    q = await JobQueue.connect(tls_nats.url, auth=tls_nats.auth("bot"), connect_timeout=20.0)
    await q.close()


@pytest.mark.parametrize("fault", ["no client certificate", "wrong password"])
def test_the_bot_refused_at_start_stops_with_one_clear_line(tmp_path, tls_nats, fault):
    """`python -m bot` against the TLS server: a refused TLS handshake or login stops it at start (status 2) with
    one error line that names the server and the settings to check; no traceback, no password."""
    env = {k: v for k, v in os.environ.items() if k not in (*AUTH_SETTINGS, *TLS_SETTINGS)}
    env.update(tls_nats.env("bot"))
    if fault == "no client certificate":
        del env["NATS_TLS_CERT"], env["NATS_TLS_KEY"]
        expected = "failed (TLSV13_ALERT_CERTIFICATE_REQUIRED); check NATS_TLS_CA"
    else:
        env["NATS_PASSWORD"] = "hunter2-wrong"
        expected = "refused the login (Authorization Violation); check NATS_USER and NATS_PASSWORD"
    env.update(DISCORD_TOKEN="not-a-real-token", DATA_DIR=str(tmp_path / "data"), LOG_LEVEL="INFO",
               DISCORD_API_BASE="http://127.0.0.1:9/api/v10", HF_HUB_OFFLINE="1")
    done = subprocess.run([sys.executable, "-m", "bot"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    out = done.stdout + done.stderr
    assert done.returncode == 2, out[-3000:]
    errors = [line for line in out.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and f"NATS at {tls_nats.url}" in errors[0] and expected in errors[0], out[-3000:]
    assert "Traceback" not in out and tls_nats.password("bot") not in out and "hunter2" not in out
