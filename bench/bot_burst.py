"""Bot burst benchmark: many /imagine interactions at once against the real bot process and the fake Discord.

    taskset -c 1 python bench/bot_burst.py             # 200 interactions; writes the "Bot burst" section of the doc
    python bench/bot_burst.py --interactions 50 --no-write

The project's fake Discord (tests/support/fakediscord.py) runs in this process; the real bot (`python -m bot`, started
the way the e2e tests start it: embedded nats-server, one local worker, its own data folder) connects to it. The
worker runs the fake engine (`--fake-engine SECONDS_PER_STEP`: fixed time per denoising step, real PNGs, no torch),
so the figures are the bot's, not the model's. Each interaction comes from its own member, so no quota or cooldown
refuses it, and the guild's queue cap (MAX_QUEUED_PER_GUILD) is raised to the size of the burst. Three phases, one run:

1. echo baseline: a bare gateway client (no discord.py, no database; `--echo-client` mode of this script) acks every
   interaction at once; the same burst against it gives the fake Discord's own round trip on this machine;
2. one at a time: `--single` interactions against the idle bot, each waiting for its acknowledgement;
3. the burst: `--interactions` /imagine at once, as fast as the fake Discord can send them, then every grid posted.

Acknowledgement latency = from the fake Discord creating the INTERACTION_CREATE to it receiving the interaction
callback (`InteractionRecord.ack_delay`). The bot's event-loop lag comes from its opt-in lag monitor
(LOOP_LAG_LOG, bot/loopmon.py: a task sleeping 10 ms and recording the overshoot, worst per second), read for the
seconds of the burst (while the worker generates and the bot posts the grids) and for a few idle seconds before.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import command_line, cpu_model, write_section  # noqa: E402

SECTION = "## Bot burst"
ACK_GOAL_MS = 300.0
LAG_GOAL_MS = 50.0
PROMPT = "a small red star at the top, at night"


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def summary_ms(delays: list[float]) -> dict[str, float]:
    ms = [d * 1000 for d in delays]
    return {"n": len(ms), "p50": percentile(ms, 50), "p99": percentile(ms, 99), "max": max(ms),
            "mean": statistics.fmean(ms)}


async def poll_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Check `predicate` every `interval` seconds (cheaper than waking on every request of the burst)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(interval)


# --- the echo client: the fake Discord's own round trip --------------------------------------------------------------
async def echo_client(gateway: str, api_base: str, token: str) -> None:
    """Identify on the gateway, then defer every interaction at once: no discord.py, no database, no checks."""
    import aiohttp

    pending: set[asyncio.Task] = set()

    async def ack(http: aiohttp.ClientSession, d: dict) -> None:
        async with http.post(f"{api_base}/interactions/{d['id']}/{d['token']}/callback", json={"type": 5}) as r:
            await r.read()

    async with aiohttp.ClientSession() as http, http.ws_connect(gateway, max_msg_size=0) as ws:
        await ws.receive_json()  # HELLO
        await ws.send_json({"op": 2, "d": {"token": token, "intents": 0, "properties": {}}})
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            if data.get("t") == "INTERACTION_CREATE":
                task = asyncio.create_task(ack(http, data["d"]))
                pending.add(task)
                task.add_done_callback(pending.discard)


# --- the benchmark -----------------------------------------------------------------------------------------------
async def fire(fd, users: list[dict], channel: dict, options: dict) -> list:
    """One /imagine from each member, back to back; returns the interaction records."""
    return [await fd.slash(user, channel, "imagine", **options) for user in users]


async def wait_acked(records: list, timeout: float) -> None:
    await poll_until(lambda: all(r.ack_delay is not None for r in records), timeout, "every acknowledgement")


async def echo_phase(fd, users: list[dict], channel: dict, options: dict, log_dir: Path) -> list[float]:
    env = {**os.environ, "ECHO_GATEWAY": fd.gateway_url, "ECHO_API_BASE": fd.api_base, "ECHO_TOKEN": fd.token}
    before = fd.identified
    with open(log_dir / "echo.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, __file__, "--echo-client"], cwd=ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT)
        try:
            await poll_until(lambda: fd.identified > before and fd._sockets, 30, "the echo client to identify")
            records = await fire(fd, users, channel, options)
            await wait_acked(records, 60)
        finally:
            proc.terminate()
            proc.wait(10)
    await poll_until(lambda: not fd._sockets, 10, "the echo client to disconnect")
    return [r.ack_delay for r in records]


async def wait_grids(world, posted: set[str], records: list, fd, stall: float) -> tuple[int, float]:
    """Wait for a grid per interaction Discord accepted in time; give up when none comes for `stall` seconds.
    Returns the number of grids and the monotonic time the last one was seen."""
    late = {r.id for r in fd.late_acks}
    expected = sum(1 for r in records if r.id not in late)
    count, last_change = 0, time.monotonic()
    while count < expected and time.monotonic() - last_change < stall:
        await asyncio.sleep(0.25)
        now = len(world.grids(posted))
        if now != count:
            count, last_change = now, time.monotonic()
    return count, last_change


def read_lag(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def worst_lag(windows: list[dict], start: float, end: float, key: str = "worst_ms") -> tuple[float, int]:
    """Worst lag (ms; or another figure, `key`) over the windows that end within [start, end], and how many there
    were."""
    chosen = [w for w in windows if start < w["t"] <= end and "worst_ms" in w]
    return (max((w.get(key, float("nan")) for w in chosen), default=float("nan")), len(chosen))


def stalls_in(lines: list[dict], start: float, end: float) -> list[dict]:
    """The lag monitor's stall records (the loop stopped past its threshold, with the loop thread's stack) in
    [start, end]."""
    return [w for w in lines if "stall_ms" in w and start < w["t"] <= end]


#: The innermost frame of a loop that waits for events: a stall caught there is the loop not getting the CPU (or the
#: GIL) back after its wait, not the loop doing something.
IDLE_FRAME = "asyncio/base_events.py"
IDLE_PLACE = "select() (idle: the process waited for a core or the GIL)"


def stall_place(stall: dict) -> str:
    """Where a stall happened: the innermost frame of the project's code (other than `python -m bot`'s start, which
    runs the loop), else the innermost frame; a loop caught waiting for events in `select()` is named as such."""
    stack = stall.get("stack") or ["?"]
    if stack[-1].endswith(" in select") and any(IDLE_FRAME in f and f.endswith(" in _run_once") for f in stack[-3:]):
        return IDLE_PLACE
    own = [f for f in stack if f.startswith(("bot/", "generation/")) and not f.startswith("bot/__main__.py")]
    return (own or stack)[-1]


def stall_places(stalls: list[dict], most: int = 3) -> str:
    """The `most` places the stalls happened most often, each with its count."""
    return ", ".join(f"{place} ({n})" for place, n in Counter(stall_place(st) for st in stalls).most_common(most))


async def run(args) -> dict:
    from tests.e2e.conftest import E2E, BotProcess, model_in_use
    from tests.support.fakediscord import FakeDiscord

    options: dict[str, Any] = {"prompt": PROMPT}
    with tempfile.TemporaryDirectory(prefix="bot-burst-") as tmp:
        tmp_path = Path(tmp)
        model, _kind = model_in_use(tmp_path)
        lag_path = tmp_path / "lag.jsonl"
        async with FakeDiscord() as fd:
            bot = BotProcess(fd, tmp_path / "data", model, tmp_path / "bot.log")
            worker = [] if args.real_engine else ["--fake-engine", str(args.seconds_per_step)]
            bot.env.update({
                "WORKER_ARGS": " ".join([*worker, "--max-batch", str(args.max_batch)]),
                "LOOP_LAG_LOG": str(lag_path),
                "IMAGINE_COOLDOWN_SECONDS": "0",
                # The whole burst waits at once: the guild's queue cap (200 by default) must not refuse any of it.
                "MAX_QUEUED_PER_GUILD": str(max(200, args.interactions + args.single)),
            })
            world = E2E(fd, bot, _kind)
            users = [fd.add_user(f"member{i}") for i in range(args.interactions + args.single)]
            await asyncio.to_thread(bot.sync)

            print("echo baseline ...", flush=True)
            echo = await echo_phase(fd, users[: args.interactions], world.art, options, tmp_path)

            print("starting the bot ...", flush=True)
            before = fd.identified
            bot.start()
            try:
                await poll_until(lambda: fd.identified > before and fd._sockets, 120, "the bot to identify")
                await poll_until(lambda: "connected as" in bot.log(), 60, "the bot to be ready", interval=0.25)
                idle_from = time.time()
                await asyncio.sleep(args.idle_seconds)
                idle_to = time.time()

                print(f"{args.single} interaction(s) one at a time ...", flush=True)
                single = []
                posted = {m["id"] for m in world.grids()}
                for user in users[args.interactions:]:
                    (record,) = await fire(fd, [user], world.art, options)
                    await wait_acked([record], 30)
                    single.append(record.ack_delay)
                    await asyncio.sleep(0.2)
                await poll_until(lambda: len(world.grids(posted)) >= args.single, 120, "the single grids")
                await asyncio.sleep(1.5)

                print(f"burst of {args.interactions} ...", flush=True)
                posted = {m["id"] for m in world.grids()}
                burst_from = time.time()
                t0 = time.monotonic()
                records = await fire(fd, users[: args.interactions], world.art, options)
                fired_s = time.monotonic() - t0
                await wait_acked(records, 120)
                acked_s = time.monotonic() - t0
                grids, last_grid = await wait_grids(world, posted, records, fd, args.stall_timeout)
                drained_s = last_grid - t0
                burst_to = time.time() - (time.monotonic() - last_grid)
                # The monitor writes a window a second; `--after-seconds` more show what the bot does once the burst
                # is over (the full garbage collection of its first quiet spell, bot/gcpace.py), outside its figures.
                await asyncio.sleep(2.5 + args.after_seconds)
            except BaseException:
                await asyncio.to_thread(bot.stop)
                print(bot.log()[-6000:], file=sys.stderr)
                raise
            peak_rss_mb = peak_rss(bot.process.pid)
            code = await asyncio.to_thread(bot.stop)
            log_text = bot.log()
        windows = read_lag(lag_path)
        if args.keep_logs is not None:
            args.keep_logs.mkdir(parents=True, exist_ok=True)
            for name in ("bot.log", "echo.log", "lag.jsonl"):
                if (tmp_path / name).exists():
                    shutil.copy(tmp_path / name, args.keep_logs / name)
    burst_lag, burst_windows = worst_lag(windows, burst_from, burst_to + 1.0)
    idle_lag, idle_windows = worst_lag(windows, idle_from + 1.0, idle_to)
    burst_gc, _ = worst_lag(windows, burst_from, burst_to + 1.0, "gc_worst_ms")
    full_gcs = sum(w.get("gc_full", 0) for w in windows if burst_from < w["t"] <= burst_to + 1.0)
    stalls = stalls_in(windows, burst_from, burst_to + 1.0)
    callback_types = [r.callback_types[0] if r.callback_types else None for r in records]
    return {
        "echo": summary_ms(echo), "single": summary_ms(single), "burst": summary_ms([r.ack_delay for r in records]),
        "late": len({r.id for r in fd.late_acks} & {r.id for r in records}), "grids": grids, "deferred": callback_types.count(5), "answered": callback_types.count(4),
        "fired_s": fired_s, "acked_s": acked_s, "drained_s": drained_s,
        "lag_burst_ms": burst_lag, "lag_burst_windows": burst_windows, "lag_idle_ms": idle_lag,
        "lag_idle_windows": idle_windows, "gc_burst_ms": burst_gc, "gc_full": full_gcs, "exit_code": code, "load": os.getloadavg()[0], "model": model, "errors": log_text.count(" ERROR "),
        "defer_after": defer_after(), "stalls": stalls, "peak_rss_mb": peak_rss_mb,
    }


def peak_rss(pid: int) -> float | None:
    """The process's peak resident memory in MiB (Linux: VmHWM of /proc/PID/status); None where unknown."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def defer_after() -> float:
    """The bot's wait before deferring an interaction that arrived on an idle bot (bot/exts/imagine/flow.py)."""
    from bot.exts.imagine.flow import DEFER_AFTER

    return DEFER_AFTER


def _without_keep_logs(argv: list[str] | None) -> list[str]:
    """The command's arguments without `--keep-logs DIR` (a local folder means nothing in the doc)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "--keep-logs" in args:
        i = args.index("--keep-logs")
        del args[i : i + 2]
    return args


def stall_line(stalls: list[dict]) -> str:
    if not stalls:
        return "the loop never stopped for 40 ms or more in the burst (the monitor's watchdog took no stack)"
    places = Counter(stall_place(st) for st in stalls)
    named = ", ".join(f"`{place}` x{n}" for place, n in places.most_common(3))
    return (f"the watchdog caught {len(stalls)} stop(s) of 40 ms or more in the burst (longest "
            f"{max(st['stall_ms'] for st in stalls):.0f} ms), in {named}")


def repeat_lines(runs: list[dict]) -> list[str]:
    """One line over all runs of `--repeat`: each run's p99 and worst lag, and how many met each goal."""
    if len(runs) < 2:
        return []
    p99s = [r["burst"]["p99"] for r in runs]
    echoes = [r["echo"]["p99"] for r in runs]
    ratios = [b / e for b, e in zip(p99s, echoes, strict=True)]
    lags = [r["lag_burst_ms"] for r in runs]
    return [
        f"- Over {len(runs)} runs of the same command in a row (`--repeat {len(runs)}`; the table and the lines above "
        f"are the last): ack p99 {', '.join(f'{v:.0f}' for v in p99s)} ms (median {statistics.median(p99s):.0f}, goal "
        f"met in {sum(v <= ACK_GOAL_MS for v in p99s)} of {len(runs)}); against each run's echo p99 "
        f"({', '.join(f'{v:.0f}' for v in echoes)} ms): {', '.join(f'{v:.2f}x' for v in ratios)} "
        f"(median {statistics.median(ratios):.2f}x); worst loop lag "
        f"{', '.join(f'{v:.1f}' for v in lags)} ms (median {statistics.median(lags):.1f}, goal met in "
        f"{sum(v <= LAG_GOAL_MS for v in lags)} of {len(runs)}).",
    ]


def report(args, r: dict, argv: list[str] | None, runs: list[dict] | None = None) -> str:
    e, s, b = r["echo"], r["single"], r["burst"]
    worker = ("the real engine on " + str(r["model"].relative_to(ROOT) if r["model"].is_relative_to(ROOT) else r["model"])
              if args.real_engine else
              f"the fake engine (`--fake-engine {args.seconds_per_step:g}`: {args.seconds_per_step * 1000:.0f} ms per "
              "step, real PNGs, no torch)")
    ack_verdict = "met" if b["p99"] <= ACK_GOAL_MS else "missed"
    lag_verdict = "met" if r["lag_burst_ms"] <= LAG_GOAL_MS else "missed"
    rows = [
        "| phase | interactions | p50 (ms) | p99 (ms) | max (ms) | p50 vs echo | p99 vs echo |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, st in (("echo baseline (bare gateway client, no bot work)", e),
                     ("bot, one at a time (idle)", s),
                     ("bot, burst", b)):
        rows.append(f"| {name} | {st['n']} | {st['p50']:.1f} | {st['p99']:.1f} | {st['max']:.1f} | "
                    f"{st['p50'] / e['p50']:.1f}x | {st['p99'] / e['p99']:.1f}x |")
    return "\n".join([
        SECTION,
        "",
        f"{b['n']} `/imagine` interactions (defaults: a 2x2 grid at the model's default size and steps), each from its "
        "own member, sent as fast as the project's fake Discord can send them to the real bot process (`python -m "
        "bot`, started like the e2e tests: embedded nats-server, one local worker). The worker runs "
        f"{worker}, at most {args.max_batch} same-shape jobs per batch, so the figures are the bot's. "
        "Acknowledgement latency: from the fake Discord creating the INTERACTION_CREATE to it receiving the "
        "interaction callback. Event-loop lag: the bot's opt-in lag monitor (`LOOP_LAG_LOG`, bot/loopmon.py; a task "
        "sleeping 10 ms, worst overshoot per second; a watchdog thread takes the loop thread's stack whenever the loop stops "
        "for 40 ms or more). The echo baseline is the same burst against a bare gateway "
        "client that defers every interaction at once: the fake Discord's own round trip on this machine.",
        "",
        f"Machine: {cpu_model()}, {os.cpu_count()} CPU cores, {len(os.sched_getaffinity(0))} usable by the benchmark, "
        "which runs the fake Discord, the bot, nats-server and the worker on them together; Python "
        f"{platform.python_version()}, {time.strftime('%Y-%m-%d')}; 1-minute load average at the end "
        f"{r['load']:.2f} (the cores are shared with other work, so the figures move from run to run).",
        f"Command: `{'taskset -c 1 ' if len(os.sched_getaffinity(0)) == 1 else ''}"
        f"{command_line('bench/bot_burst.py', _without_keep_logs(argv))}`.",
        "",
        *rows,
        "",
        f"- Acknowledgements: p99 {b['p99']:.0f} ms in the burst (goal <= {ACK_GOAL_MS:.0f} ms: {ack_verdict}); "
        f"{b['p50'] / s['p50']:.1f}x the p50 of one interaction at a time. {r['answered']} answered directly with "
        f"the queued message, {r['deferred']} deferred first (the bot defers at once when other interactions are being "
        f"admitted, else after {r['defer_after']:g} s of checks), {r['late']} "
        "acknowledged after Discord's 3 s deadline.",
        f"- The fake Discord sent the burst in {r['fired_s'] * 1000:.0f} ms; the last acknowledgement came {r['acked_s']:.2f} s "
        f"after the first interaction; {r['grids']} of {b['n']} grids were posted, the last {r['drained_s']:.1f} s after "
        f"it ({r['grids'] / r['drained_s']:.1f} grids/s).",
        f"- Event-loop lag: worst {r['lag_burst_ms']:.1f} ms over the {r['lag_burst_windows']} seconds of the burst "
        f"(the worker generating, the bot editing progress messages and posting grids; goal <= {LAG_GOAL_MS:.0f} ms: "
        f"{lag_verdict}); worst {r['lag_idle_ms']:.1f} ms over {r['lag_idle_windows']} idle seconds before it. "
        f"Garbage collection in the burst: longest {r['gc_burst_ms']:.1f} ms, {r['gc_full']} full collection(s); "
        f"{stall_line(r['stalls'])}.",
        f"- The bot logged {r['errors']} ERROR line(s) and exited with code {r['exit_code']} on Ctrl-C.",
        *repeat_lines(runs or [r]),
    ])


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--interactions", type=int, default=200, help="size of the burst")
    p.add_argument("--single", type=int, default=10, help="interactions sent one at a time before the burst")
    p.add_argument("--seconds-per-step", type=float, default=0.05, help="fake engine: seconds per denoising step")
    p.add_argument("--real-engine", action="store_true", help="run the real model in the worker, not the fake engine")
    p.add_argument("--max-batch", type=int, default=4, help="worker: most same-shape jobs per batch")
    p.add_argument("--idle-seconds", type=float, default=4.0, help="idle time measured for the lag baseline")
    p.add_argument("--stall-timeout", type=float, default=60.0,
                   help="stop waiting for the burst's grids when none was posted for this many seconds")
    p.add_argument("--keep-logs", type=Path, default=None, metavar="DIR", help="copy the bot's log and lag file here")
    p.add_argument("--after-seconds", type=float, default=0.0,
                   help="keep the bot running this long after the burst (its lag file shows what it does then)")
    p.add_argument("--repeat", type=int, default=1, help="run the whole benchmark this many times in a row and report "
                   "every run's p99 and lag (the table shows the last)")
    p.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    p.add_argument("--echo-client", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.echo_client:
        asyncio.run(echo_client(os.environ["ECHO_GATEWAY"], os.environ["ECHO_API_BASE"], os.environ["ECHO_TOKEN"]))
        return {}
    if args.repeat < 1:
        p.error(f"--repeat must be at least 1, got {args.repeat}")
    runs = []
    for i in range(args.repeat):
        if args.repeat > 1:
            print(f"run {i + 1} of {args.repeat}", flush=True)
        runs.append(asyncio.run(run(args)))
    results = runs[-1]
    body = report(args, results, argv, runs)
    print(body)
    if not args.no_write:
        write_section(body)
    return results


if __name__ == "__main__":
    main()
