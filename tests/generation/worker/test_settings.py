"""Worker settings: flags, environment, `.env`, defaults, in that order; a bad value is refused naming the setting."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from generation.protocol.contract import GenerationRequest, RequestError
from generation.worker.fake_engine import FakeEngine
from generation.worker.settings import FLAGS, ModelSpec, WorkerSettings, parse_args
from generation.worker.worker import engine_loader, is_hub_id, model_sources

ROOT = Path(__file__).resolve().parents[3]
ENV_NAMES = [WorkerSettings.env_name(f) for f in WorkerSettings.model_fields]


@pytest.fixture(autouse=True)
def clean_env(tmp_path, monkeypatch):
    """No worker variable from the outside and no `.env` of the repository: each test sets what it reads."""
    for name in [*ENV_NAMES, "CUDA_VISIBLE_DEVICES"]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models.txt").write_text("tiny=/models/tiny\n")
    (tmp_path / "x4.pth").write_bytes(b"")  # an upscaler file: read when the worker loads it, not by the settings
    for name in ("user.creds", "seed.nk", "ca.pem", "cert.pem", "key.pem"):  # contents are read at connect only
        (tmp_path / name).write_text("-----\n")


def test_defaults():
    s = parse_args([])
    assert s.nats_url.get_secret_value() == "nats://127.0.0.1:4222"
    assert (s.model, s.prefix, s.ack_wait, s.max_deliver, s.max_batch) == ("generation/models/default", "imagine",
                                                                          10.0, 3, 4)
    assert (s.models, s.models_file, s.max_loaded) == ((), None, 1)
    assert s.model_specs() == (ModelSpec("generation/models/default"),)
    assert (s.device, s.threads, s.channels_last, s.compile, s.fake_engine) == (None, None, False, False, None)
    assert (s.serve_default, s.drain_timeout, s.log_level, s.fake_name, s.fake_noise) == (True, 30.0, "INFO",
                                                                                          "fake", False)
    assert s.name.endswith(f"-{os.getpid()}")


def test_default_name_names_the_gpu(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert parse_args([]).name.endswith("-gpu2")


FLAG_CASES = [
    (["--nats-url", "nats://h:4333"], "nats_url", "nats://h:4333"),
    (["--model", "/models/sd15"], "models", ("/models/sd15",)),
    (["--models-file", "models.txt"], "models_file", Path("models.txt")),
    (["--max-loaded", "2"], "max_loaded", 2),
    (["--fake-engine", "0.05"], "fake_engine", 0.05),
    (["--fake-noise"], "fake_noise", True),
    (["--fake-name", "tiny"], "fake_name", "tiny"),
    (["--device", "cuda:1"], "device", "cuda:1"),
    (["--threads", "2"], "threads", 2),
    (["--threads", "0"], "threads", None),
    (["--channels-last"], "channels_last", True),
    (["--compile"], "compile", True),
    (["--lora-dir", "."], "lora_dir", Path(".")),
    (["--embedding-dir", "."], "embedding_dir", Path(".")),
    (["--upscaler", "x4.pth"], "upscalers", (Path("x4.pth"),)),
    (["--captioner", "org/blip"], "captioner", "org/blip"),
    (["--name", "gpu1"], "name", "gpu1"),
    (["--no-default"], "serve_default", False),
    (["--max-batch", "2"], "max_batch", 2),
    (["--ack-wait", "2.5"], "ack_wait", 2.5),
    (["--max-deliver", "5"], "max_deliver", 5),
    (["--drain-timeout", "0.2"], "drain_timeout", 0.2),
    (["--prefix", "test_1"], "prefix", "test_1"),
    (["--log-level", "debug"], "log_level", "DEBUG"),
    (["--nats-creds", "user.creds"], "nats_creds", Path("user.creds")),
    (["--nats-nkey-seed", "seed.nk"], "nats_nkey_seed", Path("seed.nk")),
    (["--nats-user", "gpu1"], "nats_user", "gpu1"),  # its password from NATS_PASSWORD (set below)
    (["--nats-tls-ca", "ca.pem", "--nats-url", "tls://h:4222"], "nats_tls_ca", Path("ca.pem")),
    (["--nats-tls-cert", "cert.pem", "--nats-tls-key", "key.pem", "--nats-tls-ca", "ca.pem", "--nats-url",
      "tls://h:4222"], "nats_tls_cert", Path("cert.pem")),
    (["--nats-tls-key", "key.pem", "--nats-tls-cert", "cert.pem", "--nats-tls-ca", "ca.pem", "--nats-url",
      "tls://h:4222"], "nats_tls_key", Path("key.pem")),
]

#: Settings that only go with others: what each test of one of them sets besides.
COMPANIONS = {
    "nats_user": {"NATS_PASSWORD": "pw"},
    "nats_password": {"NATS_USER": "gpu1"},
    "nats_tls_ca": {"NATS_URL": "tls://h:4222"},
    "nats_tls_cert": {"NATS_TLS_KEY": "key.pem", "NATS_TLS_CA": "ca.pem", "NATS_URL": "tls://h:4222"},
    "nats_tls_key": {"NATS_TLS_CERT": "cert.pem", "NATS_TLS_CA": "ca.pem", "NATS_URL": "tls://h:4222"},
}


def value(settings: WorkerSettings, field: str):
    v = getattr(settings, field)
    return v.get_secret_value() if field in ("nats_url", "nats_password", "nats_token") else v


@pytest.mark.parametrize(("argv", "field", "expected"), FLAG_CASES, ids=[" ".join(c[0]) for c in FLAG_CASES])
def test_every_flag_reaches_its_setting(monkeypatch, argv, field, expected):
    if field == "nats_user":
        monkeypatch.setenv("NATS_PASSWORD", "pw")
    assert value(parse_args(argv), field) == expected


def test_every_flag_is_tested():
    assert {c[0][0] for c in FLAG_CASES} == {option for option, *_ in FLAGS}


ENV_CASES = [
    ("NATS_URL", "nats://env:4222", "nats_url", "nats://env:4222"),
    ("MODEL_PATH", "/models/env", "model", "/models/env"),
    ("WORKER_MODELS", "sd15=/models/sd15, org/sdxl@v2,", "models", ("sd15=/models/sd15", "org/sdxl@v2")),
    ("WORKER_MODELS_FILE", "models.txt", "models_file", Path("models.txt")),
    ("WORKER_MAX_LOADED", "3", "max_loaded", 3),
    ("WORKER_NAME", "gpu-box-0", "name", "gpu-box-0"),
    ("WORKER_THREADS", "1", "threads", 1),
    ("WORKER_THREADS", "0", "threads", None),
    ("WORKER_MAX_BATCH", "8", "max_batch", 8),
    ("WORKER_DEVICE", "cpu", "device", "cpu"),
    ("WORKER_COMPILE", "true", "compile", True),
    ("WORKER_CHANNELS_LAST", "1", "channels_last", True),
    ("WORKER_LORA_DIR", ".", "lora_dir", Path(".")),
    ("WORKER_EMBEDDING_DIR", ".", "embedding_dir", Path(".")),
    ("WORKER_UPSCALERS", "x4.pth, x4.pth", "upscalers", (Path("x4.pth"), Path("x4.pth"))),
    ("WORKER_CAPTIONER", "/models/blip", "captioner", "/models/blip"),
    ("WORKER_SERVE_DEFAULT", "false", "serve_default", False),
    ("WORKER_DRAIN_TIMEOUT", "5", "drain_timeout", 5.0),
    ("WORKER_FAKE_ENGINE", "0.01", "fake_engine", 0.01),
    ("WORKER_FAKE_NOISE", "yes", "fake_noise", True),
    ("WORKER_FAKE_NAME", "tiny", "fake_name", "tiny"),
    ("QUEUE_ACK_WAIT", "4", "ack_wait", 4.0),
    ("QUEUE_MAX_DELIVER", "2", "max_deliver", 2),
    ("QUEUE_PREFIX", "other", "prefix", "other"),
    ("LOG_LEVEL", "warning", "log_level", "WARNING"),
    ("NATS_CREDS", "user.creds", "nats_creds", Path("user.creds")),
    ("NATS_NKEY_SEED", "seed.nk", "nats_nkey_seed", Path("seed.nk")),
    ("NATS_USER", "gpu1", "nats_user", "gpu1"),
    ("NATS_PASSWORD", "s3cret", "nats_password", "s3cret"),
    ("NATS_TOKEN", "t0ken", "nats_token", "t0ken"),
    ("NATS_TLS_CA", "ca.pem", "nats_tls_ca", Path("ca.pem")),
    ("NATS_TLS_CERT", "cert.pem", "nats_tls_cert", Path("cert.pem")),
    ("NATS_TLS_KEY", "key.pem", "nats_tls_key", Path("key.pem")),
]


@pytest.mark.parametrize(("env", "raw", "field", "expected"), ENV_CASES, ids=[f"{c[0]}={c[1]}" for c in ENV_CASES])
def test_every_environment_variable_reaches_its_setting(monkeypatch, env, raw, field, expected):
    for k, v in COMPANIONS.get(field, {}).items():
        monkeypatch.setenv(k, v)
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
        (["--max-loaded", "0"], {}, "setting `max_loaded` (--max-loaded, env WORKER_MAX_LOADED)"),
        (["--model", "no good!=/models/x"], {}, "setting `models` (--model, env WORKER_MODELS): model name 'no good!' "
                                                 "has to be 1-80 letters"),
        ([], {"WORKER_MODELS": "a=/x,=/y"}, "setting `models` (--model, env WORKER_MODELS): model '=/y' has no "
                                            "name before its '='"),
        (["--model", "a= "], {}, "setting `models` (--model, env WORKER_MODELS): model 'a=' names no source"),
        (["--models-file", "missing.txt"], {}, "setting `models_file` (--models-file, env WORKER_MODELS_FILE): the "
                                               "models file could not be read (No such file or directory)"),
        (["--model", "sd=/a", "--model", "SD=/b"], {}, "settings: two models share the name 'SD' (sd=/a and SD=/b)"),
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


def test_nats_credentials_come_from_the_environment_and_stay_secret(monkeypatch, capsys):
    """NATS_USER/NATS_PASSWORD (or NATS_TOKEN) reach the connection's keywords; neither the password nor the token
    shows in the settings' repr, nor in an error about another setting."""
    monkeypatch.setenv("NATS_USER", "gpu1")
    monkeypatch.setenv("NATS_PASSWORD", "hunter2")
    s = parse_args([])
    kw = s.nats_auth().connect_kwargs(s.nats_url.get_secret_value())
    assert (kw["user"], kw["password"], kw["inbox_prefix"]) == ("gpu1", "hunter2", "_INBOX.gpu1")
    assert "hunter2" not in repr(s) + str(s) + repr(s.nats_auth()) + s.nats_auth().describe()
    with pytest.raises(SystemExit):
        parse_args(["--max-batch", "x"])
    assert "hunter2" not in capsys.readouterr().err
    monkeypatch.delenv("NATS_USER")
    monkeypatch.delenv("NATS_PASSWORD")
    monkeypatch.setenv("NATS_TOKEN", "t0psecret")
    s = parse_args([])
    assert s.nats_auth().connect_kwargs(s.nats_url.get_secret_value())["token"] == "t0psecret"
    assert "t0psecret" not in repr(s) + repr(s.nats_auth())


@pytest.mark.parametrize("flag", ["--nats-password", "--nats-token"])
def test_no_flag_takes_a_password_or_a_token(capsys, flag):
    """A command line is readable by every local user (/proc/<pid>/cmdline): secrets have no flag."""
    with pytest.raises(SystemExit) as e:
        parse_args([flag, "hunter2"])
    assert e.value.code == 2 and "unrecognized arguments" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"NATS_USER": "gpu1"}, "NATS_USER is set without NATS_PASSWORD"),
        ({"NATS_PASSWORD": "hunter2"}, "NATS_PASSWORD is set without NATS_USER"),
        ({"NATS_USER": "gpu1", "NATS_PASSWORD": "hunter2", "NATS_TOKEN": "hunter2"},
         "NATS_USER/NATS_PASSWORD and NATS_TOKEN are all set"),
        ({"NATS_CREDS": "user.creds", "NATS_NKEY_SEED": "seed.nk"}, "NATS_CREDS and NATS_NKEY_SEED are all set"),
        ({"NATS_CREDS": "missing.creds"}, "NATS_CREDS names 'missing.creds', which is not a file"),
        ({"NATS_TLS_CA": "ca.pem"}, "NATS_URL 'nats://127.0.0.1:4222' starts with nats:// but NATS_TLS_* is set"),
        ({"NATS_URL": "tls://h:4222"}, "is a tls:// URL but NATS_TLS_CA is not set"),
        ({"NATS_TLS_CERT": "cert.pem", "NATS_TLS_CA": "ca.pem", "NATS_URL": "tls://h:4222"},
         "NATS_TLS_CERT is set without NATS_TLS_KEY"),
        ({"NATS_USER": "a.b", "NATS_PASSWORD": "hunter2"}, "NATS_USER 'a.b' has to be 1-64 letters"),
        ({"NATS_URL": "nats://u:hunter2@h:4222", "NATS_USER": "gpu1", "NATS_PASSWORD": "hunter2"},
         "NATS_URL 'nats://***@h:4222' holds credentials"),
    ],
)
def test_nats_settings_that_do_not_fit_are_refused_naming_them(monkeypatch, capsys, env, named):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(SystemExit) as e:
        parse_args([])
    err = capsys.readouterr().err
    assert e.value.code == 2 and named in err, err
    assert "hunter2" not in err


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
        # the bot's keys, documented above the section
        if name not in ("NATS_URL", "MODEL_PATH", "LOG_LEVEL") and not name.startswith("NATS_"):
            assert f"# {name}=" in worker_part, name


def test_the_command_refuses_a_bad_environment_value(tmp_path):
    """`python -m generation.worker` itself: a bad variable stops it before it connects, with the setting named."""
    env = {k: v for k, v in os.environ.items() if k not in ENV_NAMES}
    env["WORKER_MAX_BATCH"] = "many"
    out = subprocess.run([sys.executable, "-m", "generation.worker", "--nats-url", "nats://127.0.0.1:1"], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "setting `max_batch` (--max-batch, env WORKER_MAX_BATCH)" in out.stderr and "'many'" in out.stderr


def test_models_repeat_and_name_themselves():
    """`--model` repeats, each `SOURCE` or `NAME=SOURCE` (folder, checkpoint file or Hugging Face id); the first
    serves default requests. A `=` after a path separator belongs to the source."""
    s = parse_args(["--model", "sd15=/models/sd15", "--model", "org/sdxl-base@v1.0", "--model", "My Model = ./m.ckpt",
                    "--model", "./odd/a=b", "--max-loaded", "2"])
    assert s.model_specs() == (ModelSpec("/models/sd15", "sd15"), ModelSpec("org/sdxl-base@v1.0"),
                               ModelSpec("./m.ckpt", "My Model"), ModelSpec("./odd/a=b"))
    assert [str(m) for m in s.model_specs()] == ["sd15=/models/sd15", "org/sdxl-base@v1.0", "My Model=./m.ckpt",
                                                 "./odd/a=b"]
    assert s.max_loaded == 2 and s.model == "generation/models/default"


def test_models_given_replace_model_path(monkeypatch):
    """MODEL_PATH is the one model served when no other is given; `--model` (or WORKER_MODELS) replaces it."""
    monkeypatch.setenv("MODEL_PATH", "/models/env")
    assert parse_args([]).model_specs() == (ModelSpec("/models/env"),)
    assert parse_args(["--model", "a=/models/a"]).model_specs() == (ModelSpec("/models/a", "a"),)
    monkeypatch.setenv("WORKER_MODELS", "b=/models/b,/models/c")
    assert parse_args([]).model_specs() == (ModelSpec("/models/b", "b"), ModelSpec("/models/c"))
    assert parse_args(["--model", "/models/d"]).model_specs() == (ModelSpec("/models/d"),)  # the flag wins


def test_models_file_lines_follow_the_flags(tmp_path):
    """A models file: one `[NAME=]SOURCE` per line, blank lines and `#` comments skipped, served after `--model`."""
    file = tmp_path / "served.txt"
    file.write_text("# the models of gpu0\n\nsdxl = stabilityai/sdxl-base@main   # the big one\n  /models/shapes\n"
                    "anime=/models/anime.safetensors\n")
    s = parse_args(["--model", "tiny=/models/tiny", "--models-file", str(file)])
    assert s.model_specs() == (ModelSpec("/models/tiny", "tiny"), ModelSpec("stabilityai/sdxl-base@main", "sdxl"),
                               ModelSpec("/models/shapes"), ModelSpec("/models/anime.safetensors", "anime"))
    assert parse_args(["--models-file", str(file)]).model_specs()[0].name == "sdxl"


def test_a_bad_models_file_line_is_named(tmp_path, capsys):
    file = tmp_path / "served.txt"
    file.write_text("/models/a\nbad name!=/models/b\n")
    with pytest.raises(SystemExit):
        parse_args(["--models-file", str(file)])
    err = capsys.readouterr().err
    assert "setting `models_file` (--models-file, env WORKER_MODELS_FILE)" in err
    assert f"{file}, line 2: model name 'bad name!'" in err
    file.write_text("a=/models/a\nA=/models/b\n")
    with pytest.raises(SystemExit):
        parse_args(["--models-file", str(file)])
    assert "two models share the name 'A'" in capsys.readouterr().err


def test_fake_engine_models(tmp_path, monkeypatch):
    """The fake engine serves the models given (cards from their `imaginebot.json`), never MODEL_PATH's: without a
    `--model` it is one default fake model named by `--fake-name`."""
    monkeypatch.setenv("MODEL_PATH", str(ROOT / "generation/models/default"))  # has an imaginebot.json
    sources = model_sources(parse_args(["--fake-engine", "0", "--fake-name", "tiny"]))
    assert [s.hint for s in sources] == ["tiny"]
    engine = sources[0].load()
    assert engine.card.name == "tiny" and (engine.card.min_side, engine.card.max_side) == (64, 2048)
    assert (engine.card.default_width, engine.card.default_steps, engine.card.default_guidance) == (512, 25, 7.5)

    one = tmp_path / "one"
    one.mkdir()
    (one / "imaginebot.json").write_text(json.dumps({"name": "shapes", "description": "Shapes.", "max_side": 256,
                                                     "default_width": 64, "default_height": 64, "default_steps": 4,
                                                     "knows": {"colors": ["red"]}, "example_prompts": ["a red dot"],
                                                     "trained_steps": 10}))
    two = tmp_path / "two"
    two.mkdir()
    sources = model_sources(parse_args(["--fake-engine", "0", "--model", str(one), "--model", str(two),
                                        "--model", f"named={one}"]))
    cards = [s.load().card for s in sources]
    assert [c.name for c in cards] == ["shapes", "two", "named"]
    assert (cards[0].description, cards[0].max_side, cards[0].default_steps, cards[0].knows,
            cards[0].example_prompts) == ("Shapes.", 256, 4, {"colors": ("red",)}, ("a red dot",))
    assert cards[0].settings["trained_steps"] == 10 and cards[2].max_side == 256
    # A sole model folder without a name of its own keeps the name of --fake-name, as before cards.
    assert model_sources(parse_args(["--fake-engine", "0", "--model", str(two)]))[0].load().name == "fake"
    with pytest.raises(RequestError, match="shapes takes sides from 64 to 256 px"):
        sources[0].load().check(GenerationRequest("x", width=512, height=512))


def test_hub_ids_are_not_paths():
    assert is_hub_id("stabilityai/sdxl-turbo") and is_hub_id("org/model@v1.0") and is_hub_id("org/m@refs/pr/1")
    assert not is_hub_id("/models/sd15") and not is_hub_id("generation/models/default")
    assert not is_hub_id("./local") and not is_hub_id("model.safetensors") and not is_hub_id("org/model.ckpt")
