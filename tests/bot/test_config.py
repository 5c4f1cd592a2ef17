"""Settings: defaults, environment, and the secret token."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

from bot.config import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_database_url_defaults_to_a_file_under_the_data_dir(monkeypatch):
    """Without DATABASE_URL the database is data_dir/bot.db."""
    monkeypatch.delenv("DATABASE_URL", raising=False)
    assert Settings(_env_file=None).database_url == "sqlite+aiosqlite:///data/bot.db"
    assert Settings(_env_file=None, data_dir="/srv/bot").database_url == "sqlite+aiosqlite:////srv/bot/bot.db"


def test_token_never_shows_in_repr_or_logs(monkeypatch, caplog):
    """The token is read from the environment but printed as stars."""
    monkeypatch.setenv("DISCORD_TOKEN", "super-secret-token")
    settings = Settings(_env_file=None)
    assert settings.discord_token.get_secret_value() == "super-secret-token"
    with caplog.at_level(logging.INFO):
        logging.getLogger("test").info("settings: %s %r", settings, settings)
    assert "super-secret-token" not in repr(settings) + str(settings) + caplog.text


def test_empty_values_in_env_file_fall_back_to_defaults(tmp_path, monkeypatch):
    """A copied .env.example (empty keys) loads with the defaults."""
    for key in ("DISCORD_TOKEN", "DEV_GUILD_ID", "NATS_URL", "DATABASE_URL"):
        monkeypatch.delenv(key, raising=False)
    settings = Settings(_env_file=ROOT / ".env.example")
    assert (settings.discord_token, settings.dev_guild_id, settings.nats_url) == (None, None, None)
    # 40 credits, 4,000 units; the relax budget (empty key) 4 × that.
    assert (settings.default_limits().images_per_day, settings.default_limits().relax_per_day) == (4000, 16000)


def test_env_example_documents_every_setting():
    """Every field of Settings has a key in .env.example."""
    text = (ROOT / ".env.example").read_text()
    keys = {line.split("=", 1)[0] for line in text.splitlines() if "=" in line and not line.startswith("#")}
    assert keys == {name.upper() for name in Settings.model_fields}


def test_importing_the_bot_domain_does_not_import_torch():
    """bot.config, bot.db and bot.services load without torch or diffusers."""
    code = "import sys, bot.config, bot.db, bot.services, bot.errors; print(sorted(m for m in ('torch', 'diffusers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_allowed_guild_ids_and_operator_caps(monkeypatch):
    """ALLOWED_GUILD_IDS is a comma-separated list (empty: every guild is allowed); the caps have their defaults and
    become the quota service's `Caps`."""
    monkeypatch.delenv("ALLOWED_GUILD_IDS", raising=False)
    open_to_all = Settings(_env_file=None)
    assert open_to_all.allowed_guild_ids == [] and open_to_all.guild_allowed(123)
    monkeypatch.setenv("ALLOWED_GUILD_IDS", " 11, 22 ,")
    listed = Settings(_env_file=None)
    assert listed.allowed_guild_ids == [11, 22] and listed.guild_allowed(22) and not listed.guild_allowed(33)
    assert (listed.max_credits_per_day_cap, listed.max_concurrent_cap, listed.max_queued_per_guild) == (1000, 8, 200)
    # The name from before credits still works, and means credits (units are hundredths).
    caps = Settings(_env_file=None, max_images_per_day_cap=50, max_concurrent_cap=3).quota_caps()
    assert (caps.images_per_day, caps.max_concurrent, caps.relax_per_day) == (5000, 3, 400_000)
    monkeypatch.setenv("DEFAULT_IMAGES_PER_DAY", "7")
    monkeypatch.setenv("DEFAULT_RELAX_CREDITS_PER_DAY", "0.5")
    old = Settings(_env_file=None)
    assert (old.default_credits_per_day, old.default_limits().images_per_day, old.default_limits().relax_per_day) == (
        7, 700, 50)
