"""bench/bot_scale.py's queries part on a small history, so the benchmark keeps working as the schema changes: the
history filler writes rows the bot's services read, every hot query runs through an index, and the report renders."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import sqlite3
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(scope="module")
def scale():
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("bench_bot_scale", BENCH / "bot_scale.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_bot_scale"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("bench_bot_scale", None)
    sys.path.remove(str(BENCH))


def test_plan_helpers(scale):
    plan = ["SELECT a…: SEARCH job USING INDEX ix (status=?)", "SELECT a…: SEARCH job USING INDEX ix (status=?)",
            "SELECT b…: SCAN job; SEARCH image USING INDEX ix_image (job_id=?)", "SELECT c…: SCAN guild_setting"]
    assert scale.full_scans(plan) == ["SCAN job"]  # a small table read whole is no finding
    assert scale.collapse(plan)[0].endswith("(x2: one per page)") and len(scale.collapse(plan)) == 3


def test_stall_places_are_named_by_how_often_they_stopped_the_loop(scale):
    """The report names the places that stopped the loop most often (not the first ones in alphabetical order); the
    loop's own start is no place, and a loop caught waiting in select() is named as idle."""
    idle = {"stack": ["bot/__main__.py:237 in main", "3.11/asyncio/runners.py:118 in run",
                      "3.11/asyncio/base_events.py:1922 in _run_once", "3.11/selectors.py:468 in select"]}
    view = {"stack": ["bot/__main__.py:237 in main", "bot/exts/imagine/presenter.py:299 in job_progress",
                      "bot/services/jobs.py:466 in _view_in", ".venv/lib/sqlalchemy/orm/session.py:2054 in connection"]}
    library = {"stack": ["bot/__main__.py:237 in main", "3.11/asyncio/events.py:80 in _run",
                         ".venv/lib/python3.11/site-packages/aiohttp/a.py:1 in f"]}
    assert scale.stall_place(view) == "bot/services/jobs.py:466 in _view_in"
    assert scale.stall_place(library) == ".venv/lib/python3.11/site-packages/aiohttp/a.py:1 in f"
    assert scale.stall_place(idle).startswith("select() (idle")
    named = scale.stall_places([library, view, view, idle, idle, idle], most=2)
    assert named == "select() (idle: the process waited for a core or the GIL) (3), bot/services/jobs.py:466 in _view_in (2)"


async def test_the_hot_queries_on_a_small_history(scale, tmp_path):
    request = scale.model_request(Path(__file__).resolve().parents[2] / "generation" / "models" / "default")
    src = await asyncio.to_thread(scale.history_db, tmp_path / "cache", 300, 20, request)
    with sqlite3.connect(src) as conn:
        statuses = dict(conn.execute("SELECT status, count(*) FROM job GROUP BY status").fetchall())
        images = conn.execute("SELECT count(*) FROM image").fetchone()[0]
    assert sum(statuses.values()) == 300 and images == 4 * statuses["posted"]
    # Built once: the same file again.
    assert scale.history_db(tmp_path / "cache", 300, 20, request) == src

    from bot.db import create_engine
    from bot.services import build_services

    work = tmp_path / "work" / "bot.db"
    scale.copy_db(src, work)
    with sqlite3.connect(work) as conn:
        (history_user,) = conn.execute("SELECT user_id FROM job WHERE status = 'posted' LIMIT 1").fetchone()
    settings = scale.bench_settings(work.parent, work)
    engine = create_engine(settings.database_url)
    users = list(range(9_000_000_000_000_000, 9_000_000_000_000_020))
    try:
        services = build_services(settings, engine)
        await scale.add_backlog(services, 30, scale.HISTORY_GUILD, scale.HISTORY_CHANNEL, users, request)
        # The filled history reads back through the bot's own services.
        history = await services.jobs.history(scale.HISTORY_GUILD, history_user, 10)
        assert history and all(len(j.images) == (4 if j.status == "posted" else 0) for j in history)
        assert len(await services.jobs.waiting()) == 30
    finally:
        await engine.dispose()
    results = await scale.time_queries(work, work.parent, users, history_user, 1, request, scale.HISTORY_GUILD)
    assert set(results) >= {scale.RECONCILE, "/show (job with 4 images)", "/history (10)", "fair-order pick "
                            "(next_for_dispatch, 8)", "admission: create (cooldown, limits, quota, insert)"}
    for name, r in results.items():
        assert r["plan"] and not r["full_scans"], (name, r["plan"])
        assert r["median_ms"] > 0 and r["sql_ms"] >= 0

    out = {"queries": {"history 300, backlog 30": {"history": 300, "backlog": 30, "queries": results}}}
    args = argparse.Namespace(repeats=1, history=300, backlogs=[30], burst=200, drain=100)
    text = scale.report(args, out, [])
    assert text.startswith(scale.SECTION) and scale.RECONCILE_PAGE in text and "### Goals (issue #20)" in text


def test_the_burst_goal_is_read_from_each_run_against_its_own_echo(scale):
    """Several runs of the burst: the table shows the median run by p99 against its own echo, every run is listed,
    the goal's verdict follows the median ratio, and a file from before `--burst-runs` (one `burst`) still reads."""

    def run(p99, echo, lag=10.0, late=0, grids=2000):
        return {"echo": {"n": 2000, "p50": echo / 2, "p99": echo, "max": echo}, "load": 0.5,
                "burst": {"n": 2000, "p50": p99 / 2, "p99": p99, "max": p99}, "late": late, "grids": grids,
                "lag_burst_ms": lag, "lag_burst_windows": 300, "gc_burst_ms": 5.0, "gc_full": 0, "stalls": [],
                "drained_s": 300.0, "errors": 0}

    runs = [run(1500, 500), run(900, 600), run(1000, 400)]  # 3.0x, 1.5x, 2.5x
    assert scale.median_burst(runs) is runs[2]
    args = argparse.Namespace(repeats=1, history=300, backlogs=[30], burst=200, drain=100)
    text = scale.report(args, {"burst": scale.median_burst(runs), "burst_runs": runs}, [])
    assert "3.00x, 1.50x, 2.50x over 3 runs (median 2.50x, within 2x in 1 of 3) (goal <= 2x: **missed**)" in text
    assert "1500 / 500 ms (3.00x), 900 / 600 ms (1.50x), 1000 / 400 ms (2.50x)" in text
    runs[0] = run(700, 500)
    text = scale.report(args, {"burst": scale.median_burst(runs), "burst_runs": runs}, [])
    assert "(median 1.50x, within 2x in 2 of 3) (goal <= 2x: met)" in text
    runs[1] = run(900, 600, late=1)
    assert "1 acknowledged after 3 s (goal 0: **missed**)" in scale.report(args, {"burst_runs": runs, "burst": runs[0]}, [])
    old = scale.report(args, {"burst": run(900, 600)}, [])
    assert "1.50x (goal <= 2x: met)" in old and scale.burst_runs({"burst": run(900, 600)})[0]["late"] == 0
