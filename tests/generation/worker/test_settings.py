"""Worker settings: flags, environment, `.env`, defaults, in that order; a bad value is refused naming the setting."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from generation.worker.fake_engine import FakeEngine
from generation.worker.settings import FLAGS, WorkerSettings, parse_args
from generation.worker.worker import engine_loader

ROOT = Path(__file__).resolve().parents[3]
ENV_NAMES = [WorkerSettings.env_name(f) for f in WorkerSettings.model_fields]


@pytest.fixture(autouse=True)
def clean_env(tmp_path, monkeypatch):
    """No worker variable from the outside and no `.env` of the repository: each test sets what it reads."""
    for name in [*ENV_NAMES, "CUDA_VISIBLE_DEVICES"]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


def test_defaults():
    s = parse_args([])
    assert s.nats_url.get_secret_value() == "nats://127.0.0.1:4222"
    assert (s.model, s.prefix, s.ack_wait, s.max_deliver, s.max_batch) == ("generation/models/default", "imagine",
                                                                          10.0, 3, 4)
    assert (s.device, s.threads, s.channels_last, s.compile, s.fake_engine) == (None, None, False, False, None)
    assert (s.serve_default, s.drain_timeout, s.log_level, s.fake_name, s.fake_noise) == (True, 30.0, "INFO",
                                                                                          "fake", False)
    assert s.name.endswith(f"-{os.getpid()}")


def test_default_name_names_the_gpu(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert parse_args([]).name.endswith("-gpu2")


FLAG_CASES = [
    (["--nats-url", "nats://h:4333"], "nats_url", "nats://h:4333"),
    (["--model", "/models/sd15"], "model", "/models/sd15"),
    (["--fake-engine", "0.05"], "fake_engine", 0.05),
    (["--fake-noise"], "fake_noise", True),
    (["--fake-name", "tiny"], "fake_name", "tiny"),
    (["--device", "cuda:1"], "device", "cuda:1"),
    (["--threads", "2"], "threads", 2),
    (["--threads", "0"], "threads", None),
    (["--channels-last"], "channels_last", True),
    (["--compile"], "compile", True),
    (["--name", "gpu1"], "name", "gpu1"),
    (["--no-default"], "serve_default", False),
    (["--max-batch", "2"], "max_batch", 2),
    (["--ack-wait", "2.5"], "ack_wait", 2.5),
    (["--max-deliver", "5"], "max_deliver", 5),
    (["--drain-timeout", "0.2"], "drain_timeout", 0.2),
    (["--prefix", "test_1"], "prefix", "test_1"),
    (["--log-level", "debug"], "log_level", "DEBUG"),
]


def value(settings: WorkerSettings, field: str):
    v = getattr(settings, field)
    return v.get_secret_value() if field == "nats_url" else v


@pytest.mark.parametrize(("argv", "field", "expected"), FLAG_CASES, ids=[" ".join(c[0]) for c in FLAG_CASES])
def test_every_flag_reaches_its_setting(argv, field, expected):
    assert value(parse_args(argv), field) == expected


def test_every_flag_is_tested():
    assert {c[0][0] for c in FLAG_CASES} == {option for option, *_ in FLAGS}


ENV_CASES = [
    ("NATS_URL", "nats://env:4222", "nats_url", "nats://env:4222"),
    ("MODEL_PATH", "/models/env", "model", "/models/env"),
    ("WORKER_NAME", "gpu-box-0", "name", "gpu-box-0"),
    ("WORKER_THREADS", "1", "threads", 1),
    ("WORKER_THREADS", "0", "threads", None),
    ("WORKER_MAX_BATCH", "8", "max_batch", 8),
    ("WORKER_DEVICE", "cpu", "device", "cpu"),
    ("WORKER_COMPILE", "true", "compile", True),
    ("WORKER_CHANNELS_LAST", "1", "channels_last", True),
    ("WORKER_SERVE_DEFAULT", "false", "serve_default", False),
    ("WORKER_DRAIN_TIMEOUT", "5", "drain_timeout", 5.0),
    ("WORKER_FAKE_ENGINE", "0.01", "fake_engine", 0.01),
    ("WORKER_FAKE_NOISE", "yes", "fake_noise", True),
    ("WORKER_FAKE_NAME", "tiny", "fake_name", "tiny"),
    ("QUEUE_ACK_WAIT", "4", "ack_wait", 4.0),
    ("QUEUE_MAX_DELIVER", "2", "max_deliver", 2),
    ("QUEUE_PREFIX", "other", "prefix", "other"),
    ("LOG_LEVEL", "warning", "log_level", "WARNING"),
]


@pytest.mark.parametrize(("env", "raw", "field", "expected"), ENV_CASES, ids=[f"{c[0]}={c[1]}" for c in ENV_CASES])
def test_every_environment_variable_reaches_its_setting(monkeypatch, env, raw, field, expected):
    monkeypatch.setenv(env, raw)
    assert value(parse_args([]), field) == expected


def test_every_environment_variable_is_tested():
    assert {c[0] for c in ENV_CASES} == set(ENV_NAMES)


def test_flags_win_over_the_environment(monkeypatch):
    monkeypatch.setenv("WORKER_MAX_BATCH", "8")
    monkeypatch.setenv("NATS_URL", "nats://env:4222")
    monkeypatch.setenv("WORKER_SERVE_DEFAULT", "true")
    s = parse_args(["--max-batch", "2", "--nats-url", "nats://flag:4222", "--no-default"])
    assert (s.max_batch, s.nats_url.get_secret_value(), s.serve_default) == (2, "nats://flag:4222", False)
    assert s.queue_config().ack_wait == 10.0 and s.queue_config().prefix == "imagine"


def test_dot_env_file_is_read_below_the_environment(tmp_path, monkeypatch):
    """`.env` in the working directory (shared with the bot: its keys are ignored, empty values count as unset)."""
    (tmp_path / ".env").write_text(
        "DISCORD_TOKEN=bot-secret\nNATS_URL=\nMODEL_PATH=/models/dotenv\nWORKER_MAX_BATCH=6\nWORKER_NAME=dotenv\n"
        "QUEUE_ACK_WAIT=3\nWORKER_THREADS=\n"
    )
    monkeypatch.setenv("WORKER_NAME", "from-env")
    s = parse_args(["--ack-wait", "7"])
    assert (s.model, s.max_batch, s.name, s.ack_wait) == ("/models/dotenv", 6, "from-env", 7.0)
    assert s.nats_url.get_secret_value() == "nats://127.0.0.1:4222" and s.threads is None


@pytest.mark.parametrize(
    ("argv", "env", "named"),
    [
        (["--max-batch", "0"], {}, "setting `max_batch` (--max-batch, env WORKER_MAX_BATCH): Input should be greater "
                                   "than or equal to 1 (got '0')"),
        (["--ack-wait", "soon"], {}, "setting `ack_wait` (--ack-wait, env QUEUE_ACK_WAIT): Input should be a valid "
                                     "number"),
        ([], {"QUEUE_MAX_DELIVER": "three"}, "setting `max_deliver` (--max-deliver, env QUEUE_MAX_DELIVER)"),
        ([], {"WORKER_COMPILE": "maybe"}, "setting `compile` (--compile, env WORKER_COMPILE): Input should be a valid "
                                          "boolean"),
        (["--log-level", "loud"], {}, "setting `log_level` (--log-level, env LOG_LEVEL)"),
        (["--prefix", "a.b"], {}, "setting `prefix` (--prefix, env QUEUE_PREFIX)"),
        (["--threads", "-1"], {}, "setting `threads` (--threads, env WORKER_THREADS)"),
        (["--fake-engine", "fast"], {}, "setting `fake_engine` (--fake-engine, env WORKER_FAKE_ENGINE)"),
    ],
)
def test_a_bad_value_exits_naming_the_setting(monkeypatch, capsys, argv, env, named):
    """From a flag or from the environment, a bad value exits with status 2 (like a bad flag) and says which setting,
    its flag and its variable, what was wrong and the value given."""
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(SystemExit) as e:
        parse_args(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "invalid settings" in err and named in err, err


def test_a_bad_value_in_dot_env_is_refused_too(tmp_path):
    (tmp_path / ".env").write_text("WORKER_MAX_BATCH=lots\n")
    with pytest.raises(ValidationError, match="max_batch"):
        WorkerSettings()


def test_the_nats_url_is_secret(monkeypatch, capsys):
    """Credentials in the NATS URL show neither in the settings' repr nor in an error about another setting."""
    url = "nats://worker:hunter2@gpu-host:4222"
    s = parse_args(["--nats-url", url])
    assert s.nats_url.get_secret_value() == url
    assert "hunter2" not in repr(s) + str(s)
    monkeypatch.setenv("NATS_URL", url)
    with pytest.raises(SystemExit):
        parse_args(["--max-batch", "x"])
    assert "hunter2" not in capsys.readouterr().err


def test_engine_loader_follows_the_settings():
    load, hint = engine_loader(parse_args(["--fake-engine", "0.001", "--fake-name", "tiny", "--fake-noise"]))
    engine = load()
    assert isinstance(engine, FakeEngine) and hint == "tiny" and engine.name == "tiny"
    load, hint = engine_loader(parse_args(["--model", "/does/not/exist"]))
    assert hint == "/does/not/exist"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load()


def test_env_example_documents_every_worker_setting():
    """The worker section of .env.example names every variable a worker reads."""
    text = (ROOT / ".env.example").read_text()
    worker_part = text[text.index("# --- Workers"):]
    missing = [name for name in ENV_NAMES if f"{name}=" not in text]
    assert missing == []
    for name in ENV_NAMES:
        if name not in ("NATS_URL", "MODEL_PATH", "LOG_LEVEL"):  # the bot's keys, documented above the section
            assert f"# {name}=" in worker_part, name


def test_the_command_refuses_a_bad_environment_value(tmp_path):
    """`python -m generation.worker` itself: a bad variable stops it before it connects, with the setting named."""
    env = {k: v for k, v in os.environ.items() if k not in ENV_NAMES}
    env["WORKER_MAX_BATCH"] = "many"
    out = subprocess.run([sys.executable, "-m", "generation.worker", "--nats-url", "nats://127.0.0.1:1"], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "setting `max_batch` (--max-batch, env WORKER_MAX_BATCH)" in out.stderr and "'many'" in out.stderr
