"""Alembic migrations against a fresh SQLite file."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from bot.db import create_engine, current_revision, downgrade, migrate, upgrade
from bot.db.migrate import head_revision
from bot.db.models import Base, include_name
from tests.conftest import sqlite_url

ROOT = Path(__file__).resolve().parents[3]
TABLES = {
    "guild_setting",
    "art_channel",
    "role_quota",
    "user_quota",
    "job",
    "image",
    "ban",
    "blocked_term",
    "audit_log",
    "hidden_model",
}


def _tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        ).fetchall()
    return {r[0] for r in rows}


async def test_fresh_database_migrates_up_down_and_up_again(tmp_path):
    """A fresh database goes to head, back to base (no tables left) and to head again."""
    path = tmp_path / "fresh.db"
    url = sqlite_url(path)
    await migrate(url)
    assert await current_revision(url) == head_revision()
    assert TABLES <= _tables(path)
    await downgrade(url, "base")
    assert await current_revision(url) is None
    assert _tables(path) <= {"alembic_version"}
    await upgrade(url)
    assert await current_revision(url) == head_revision()
    assert TABLES <= _tables(path)


async def test_head_matches_the_models(tmp_path):
    """The migrated schema has nothing the models lack and lacks nothing they have (no forgotten revision)."""
    url = sqlite_url(tmp_path / "cmp.db")
    await migrate(url)
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            diff = await conn.run_sync(lambda c: compare_metadata(
                MigrationContext.configure(c, opts={"include_name": include_name}), Base.metadata))
    finally:
        await engine.dispose()
    assert diff == []


def test_alembic_command_line_takes_the_url_from_settings(tmp_path):
    """`alembic upgrade head` from the repository root migrates the database named by DATABASE_URL."""
    path = tmp_path / "cli.db"
    env = {"DATABASE_URL": sqlite_url(path), "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "head"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert TABLES <= _tables(path)


def test_migrate_module_upgrades_the_configured_database(tmp_path):
    """`python -m bot.db.migrate` upgrades the database of the settings (the Makefile's `make migrate`)."""
    path = tmp_path / "mod.db"
    env = {"DATABASE_URL": sqlite_url(path), "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "bot.db.migrate"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "Warning" not in result.stderr
    assert TABLES <= _tables(path)


async def test_every_revision_downgrades_and_upgrades_again(tmp_path):
    """Each revision, one step at a time: up, down to its parent, up again."""
    from alembic.script import ScriptDirectory

    from bot.db.migrate import alembic_config

    url = sqlite_url(tmp_path / "steps.db")
    revisions = list(reversed(list(ScriptDirectory.from_config(alembic_config(url)).walk_revisions())))
    assert revisions, "no revisions found"
    for rev in revisions:
        await upgrade(url, rev.revision)
        await downgrade(url, rev.down_revision or "base")
        assert await current_revision(url) == rev.down_revision
        await upgrade(url, rev.revision)
        assert await current_revision(url) == rev.revision


async def test_downgrade_of_a_database_with_data_leaves_nothing_behind(services):
    """A migrated database holding jobs downgrades to base cleanly (no leftover tables or indexes)."""
    await services.jobs.create(1, 2, 3, [], prompt="x", num_images=1)
    url = str(services.engine.url)
    await services.engine.dispose()
    await downgrade(url, "base")
    path = services.engine.url.database
    with sqlite3.connect(path) as conn:
        leftovers = conn.execute(
            "SELECT type, name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' AND name != 'alembic_version'"
        ).fetchall()
    assert leftovers == []


# --- 0002: a job's parameters as one JSON column ------------------------------------------------------------------
#: Revision 0001's parameter columns of `job`, in its order.
PARAMETER_COLUMNS = (
    "mode", "prompt", "negative_prompt", "seed", "steps", "guidance", "width", "height", "scheduler", "num_images",
    "strength", "timeline", "model",
)
#: Jobs as revision 0001 stored them: (id, status, source job, source image, parameters).
OLD_JOBS: list[tuple[int, str, int | None, int | None, dict]] = [
    (1, "succeeded", None, None, {
        # Every parameter away from its default, quotes, backslashes, newlines and non-ASCII text in the prompts.
        "mode": "txt2img", "prompt": 'a "quoted" cat\'s hat, \\ back\\slash,\nnew line, café 猫 🐱',
        "negative_prompt": "blurry, ‘curly quotes’, \u0000-free, tab\there", "seed": 2**32 - 1, "steps": 37,
        "guidance": 12.25, "width": 768, "height": 320, "scheduler": "ddim", "num_images": 3, "strength": 0.9,
        "timeline": True, "model": "models/tiny-sd ü",
    }),
    (2, "queued", 1, 2, {
        "mode": "variation", "prompt": "naïve ‘variation’ \"of\" #1", "negative_prompt": "", "seed": 0, "steps": 25,
        "guidance": 7.5, "width": 512, "height": 512, "scheduler": "dpmpp_2m", "num_images": 4, "strength": 0.7,
        "timeline": False, "model": "",
    }),
    (3, "posted", 1, 0, {
        # An upscale may have an empty prompt; a whole-number guidance stored as REAL.
        "mode": "upscale", "prompt": "", "negative_prompt": "x" * 1500, "seed": 12345, "steps": 1, "guidance": 7.0,
        "width": 1024, "height": 2048, "scheduler": "euler_a", "num_images": 1, "strength": 0.3, "timeline": False,
        "model": "other",
    }),
]


def _insert_old_jobs(path: Path) -> None:
    cols = ", ".join(PARAMETER_COLUMNS)
    marks = ", ".join("?" for _ in PARAMETER_COLUMNS)
    with sqlite3.connect(path) as conn:
        for job_id, status, src, idx, params in OLD_JOBS:
            conn.execute(
                f"INSERT INTO job (id, guild_id, channel_id, user_id, status, cost, charge_state, {cols}, source_job_id,"
                f" source_image_index, attempts, created_at) VALUES (?, 10, 20, 30, ?, ?, 'committed', {marks}, ?, ?,"
                " 1, '2026-01-05 10:00:00')",
                (job_id, status, params["num_images"], *(params[c] for c in PARAMETER_COLUMNS), src, idx),
            )
        for i in range(3):
            conn.execute(
                "INSERT INTO image (job_id, \"index\", seed, path, sha256, nsfw, created_at) VALUES (1, ?, ?, ?, ?, 0,"
                " '2026-01-05 10:01:00')",
                (i, 2**32 - 1 + i, f"images/1/{i}.png", "0" * 64),
            )


def _old_rows(path: Path) -> list[tuple]:
    cols = ", ".join(("id", *PARAMETER_COLUMNS, "source_job_id", "source_image_index", "status", "cost"))
    with sqlite3.connect(path) as conn:
        return conn.execute(f"SELECT {cols} FROM job ORDER BY id").fetchall()


async def test_0002_moves_every_job_parameter_into_the_request_json_and_back(tmp_path):
    """Jobs stored by revision 0001 come back from JobService with the same parameters after the upgrade (the JSON
    being exactly what the request class writes), and downgrading to 0001 restores the columns unchanged."""
    from bot.config import Settings
    from bot.services import open_services
    from generation.protocol.contract import GenerationRequest

    path = tmp_path / "old.db"
    url = sqlite_url(path)
    await upgrade(url, "0001")
    _insert_old_jobs(path)
    before = _old_rows(path)

    settings = Settings(_env_file=None, data_dir=tmp_path / "data", database_url=url)
    async with open_services(settings) as services:  # migrates to head, as the bot does at start
        assert await current_revision(url) == head_revision()
        for job_id, _, src, idx, params in OLD_JOBS:
            job = await services.jobs.get(job_id)
            image = b"\x89PNG source" if params["mode"] != "txt2img" else None
            expected = GenerationRequest(**params, init_image=image)
            assert job.request.init_image is None
            assert job.to_request(init_image=image) == expected
            assert job.request.to_dict() == expected.to_dict(with_image=False)
            assert {name: getattr(job, name) for name in params} == params
            assert (job.source_job_id, job.source_image_index) == (src, idx)
            assert type(job.guidance) is float and type(job.timeline) is bool
        with sqlite3.connect(path) as conn:
            stored = dict(conn.execute("SELECT id, request FROM job").fetchall())
            columns = {r[1] for r in conn.execute("PRAGMA table_info(job)")}
        for job_id, _, _, _, params in OLD_JOBS:
            image = b"img" if params["mode"] != "txt2img" else None
            assert stored[job_id] == GenerationRequest(**params, init_image=image).to_json(with_image=False)
        assert "request" in columns and "model" in columns
        assert not columns & (set(PARAMETER_COLUMNS) - {"model"})
        # A migrated job still serves as the source of a new variation.
        new = await services.jobs.create(10, 20, 30, [], mode="variation", prompt="again", source_job_id=1,
                                         source_image_index=2, num_images=1)
        assert (await services.jobs.get(new.id)).source_job_id == 1

    await downgrade(url, "0001")
    assert await current_revision(url) == "0001"
    after = _old_rows(path)
    assert after[: len(before)] == before
    with sqlite3.connect(path) as conn:
        columns = [r[1] for r in conn.execute("PRAGMA table_info(job)")]
        checks = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'job'").fetchone()[0]
    assert columns[columns.index("charge_window_started_at") + 1 : columns.index("source_job_id")] == list(
        PARAMETER_COLUMNS
    )
    assert "request" not in columns and "ck_job_mode" in checks
    with sqlite3.connect(path) as conn, pytest.raises(sqlite3.IntegrityError):
        conn.execute("UPDATE job SET mode = 'inpaint' WHERE id = 1")


# --- 0003: a guild's model policy ---------------------------------------------------------------------------------
def _schema(path: Path, table: str) -> tuple[str, list[tuple]]:
    with sqlite3.connect(path) as conn:
        sql = conn.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone()[0]
        columns = conn.execute(f"PRAGMA table_info({table})").fetchall()
    return sql, columns


async def test_0003_adds_the_model_policy_to_a_populated_database_and_downgrades_cleanly(tmp_path):
    """A 0002 database with guild settings, jobs and audit entries upgrades with no default and nothing hidden; the
    policy is stored and read; downgrading to 0002 drops it and leaves `guild_setting` exactly as 0002 made it."""
    from bot.config import Settings
    from bot.services import open_services

    path = tmp_path / "policy.db"
    url = sqlite_url(path)
    await upgrade(url, "0002")
    settings = Settings(_env_file=None, data_dir=tmp_path / "data", database_url=url)
    guild_before = _schema(path, "guild_setting")
    with sqlite3.connect(path) as conn:
        conn.execute(
            "INSERT INTO guild_setting (guild_id, nsfw_policy, paused, images_per_day, max_side, created_at, updated_at)"
            " VALUES (10, 'allow', 1, 7, 512, '2026-01-05 10:00:00', '2026-01-05 10:00:00')"
        )
        conn.execute(
            "INSERT INTO audit_log (guild_id, actor_id, action, target, details, at) VALUES (10, 9, 'queue.pause',"
            " 'guild:10', '{}', '2026-01-05 10:00:00')"
        )
        rows_before = conn.execute("SELECT * FROM guild_setting").fetchall()

    async with open_services(settings) as services:  # migrates to head, as the bot does at start
        assert await current_revision(url) == head_revision()
        policy = await services.model_policy.policy(10)
        assert (policy.default_model, policy.hidden) == (None, ())
        guild = await services.moderation.guild_settings(10)
        # 7 images a day are 700 units (hundredths of a credit) since migration 0010.
        assert (guild.nsfw_policy, guild.paused, guild.images_per_day, guild.max_side) == ("allow", True, 700, 512)
        await services.model_policy.set_default(10, "sdxl", 9)
        await services.model_policy.hide(10, "tiny", 9)
        await services.model_policy.set_default(11, "tiny", 9)  # a guild with no settings row yet
        assert (await services.model_policy.policy(10)).default_model == "sdxl"
        assert [h.name for h in (await services.model_policy.policy(10)).hidden] == ["tiny"]
        assert (await services.moderation.guild_settings(11)).nsfw_policy == "block"
        await services.jobs.create(10, 20, 30, [], prompt="x", num_images=1, model="sdxl")

    await downgrade(url, "0002")
    assert await current_revision(url) == "0002"
    assert "hidden_model" not in _tables(path)
    sql_after, columns_after = _schema(path, "guild_setting")
    assert columns_after == guild_before[1]  # the same columns, types, defaults and order
    assert "CONSTRAINT pk_guild_setting PRIMARY KEY (guild_id)" in sql_after
    assert "CONSTRAINT ck_guild_setting_nsfw_policy CHECK" in sql_after
    with sqlite3.connect(path) as conn:
        rows_after = conn.execute("SELECT * FROM guild_setting ORDER BY guild_id").fetchall()
        assert conn.execute("SELECT count(*) FROM job").fetchone() == (1,)
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute("UPDATE guild_setting SET nsfw_policy = 'anything' WHERE guild_id = 10")
    assert rows_after[0][:-1] == rows_before[0][:-1]  # all but updated_at, which the policy change moved
    assert rows_after[1][0] == 11

    await upgrade(url)  # and up again: the policy starts empty
    async with open_services(settings) as services:
        assert (await services.model_policy.policy(10)).default_model is None


# --- 0004: the secret of a job ------------------------------------------------------------------------------------
async def test_0004_gives_every_job_its_own_secret_and_downgrades_cleanly(tmp_path):
    """A populated 0003 database upgrades with a distinct 32-byte secret for every old job (new jobs get one too, and
    it never shows in a repr); downgrading to 0003 drops the column and leaves the jobs' rows as they were."""
    from bot.config import Settings
    from bot.services import open_services

    path = tmp_path / "secret.db"
    url = sqlite_url(path)
    await upgrade(url, "0001")
    _insert_old_jobs(path)
    await upgrade(url, "0003")
    job_before = _schema(path, "job")
    with sqlite3.connect(path) as conn:
        rows_before = conn.execute("SELECT * FROM job ORDER BY id").fetchall()
    assert len(rows_before) == len(OLD_JOBS)

    await upgrade(url, "0004")
    with sqlite3.connect(path) as conn:
        secrets = conn.execute("SELECT secret FROM job ORDER BY id").fetchall()
        notnull = {r[1]: r[3] for r in conn.execute("PRAGMA table_info(job)")}["secret"]
    assert notnull == 1
    assert all(isinstance(s, bytes) and len(s) == 32 for (s,) in secrets)
    assert len({s for (s,) in secrets}) == len(secrets)

    settings = Settings(_env_file=None, data_dir=tmp_path / "data", database_url=url)
    async with open_services(settings) as services:
        old = await services.jobs.get(OLD_JOBS[0][0])
        assert old.secret == secrets[0][0]
        new = await services.jobs.create(10, 20, 30, [], prompt="x", num_images=1)
        assert len(new.secret) == 32 and new.secret not in {s for (s,) in secrets}
        assert (await services.jobs.get(new.id)).secret == new.secret
        assert new.secret.hex() not in repr(new) and repr(new.secret) not in repr(new)

    await downgrade(url, "0003")
    assert await current_revision(url) == "0003"
    assert _schema(path, "job")[1] == job_before[1]  # the same columns, types, defaults and order
    with sqlite3.connect(path) as conn:
        rows_after = conn.execute("SELECT * FROM job ORDER BY id").fetchall()
    assert rows_after[: len(rows_before)] == rows_before
    assert len(rows_after) == len(rows_before) + 1


# --- 0005: a job's result deleted with 🗑️ -----------------------------------------------------------------------
async def test_0005_adds_deleted_at_to_a_populated_database_and_downgrades_cleanly(tmp_path):
    """A populated 0004 database upgrades with every job not deleted; a job can then be marked deleted (once); its
    row stays. Downgrading to 0004 drops the column and leaves the jobs' rows as they were."""
    from bot.config import Settings
    from bot.services import open_services

    path = tmp_path / "deleted.db"
    url = sqlite_url(path)
    await upgrade(url, "0001")
    _insert_old_jobs(path)
    await upgrade(url, "0004")
    job_before = _schema(path, "job")
    with sqlite3.connect(path) as conn:
        rows_before = conn.execute("SELECT * FROM job ORDER BY id").fetchall()

    await upgrade(url, "0005")
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM job WHERE deleted_at IS NOT NULL").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM job").fetchone() == (len(rows_before),)
    settings = Settings(_env_file=None, data_dir=tmp_path / "data", database_url=url)
    async with open_services(settings) as services:
        first = OLD_JOBS[0][0]
        assert (await services.jobs.get(first)).deleted_at is None
        assert (await services.jobs.mark_deleted(first)) is not None
        assert await services.jobs.mark_deleted(first) is None  # only once
        assert (await services.jobs.get(first)).deleted_at is not None

    await downgrade(url, "0004")
    assert await current_revision(url) == "0004"
    assert _schema(path, "job")[1] == job_before[1]  # the same columns, types, defaults and order
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT * FROM job ORDER BY id").fetchall() == rows_before
    await upgrade(url)
    assert await current_revision(url) == head_revision()
