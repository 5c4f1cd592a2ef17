"""A simulated day of the queue: cost charged equals the work done, refunds are exact, the relax lane waits for the
fast one, and members alternate inside each lane.

A fake clock crosses 24 hours. Thirty members (a few heavy ones who spend their fast budget and go on in the
relax lane) send jobs of mixed sizes, steps, image counts and models at random (seeded) times. A simulated GPU runs
one job at a time through JobService as the feeder and a worker do (`next_for_dispatch` → `mark_dispatched` →
`start` → `succeed`, or `fail` for some), holding one job dispatched ahead so that a member can have a job in flight
while the next one is picked; a job takes time in proportion to its work. Not a timed test: it runs in seconds.

The work is counted here on its own, from what the GPU ran (pixels × steps × images against the card's default
image), not with bot.services.costs.
"""

from __future__ import annotations

import heapq
import math
import random
import sqlite3
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import timedelta

from bot.errors import QuotaExceeded, TooManyActiveJobs
from bot.services import build_services
from generation.protocol.cards import ModelCard
from tests.bot.conftest import CHANNEL, GUILD

CARDS = {
    "small": ModelCard(name="small", architecture="sd1", default_width=512, default_height=512, default_steps=20,
                       max_side=768, max_steps=50),
    "large": ModelCard(name="large", architecture="sdxl", default_width=1024, default_height=1024, default_steps=30,
                       max_side=1024, min_side=512, max_steps=50),
}
#: Simulated GPU seconds for one credit of work.
SECONDS_PER_CREDIT = 20.0
MEMBERS = 30
HEAVY = 6
SEED = 19


@dataclass
class Ran:
    job_id: int
    user: int
    card: str
    width: int
    height: int
    steps: int
    images: int
    ok: bool


def work_units(card: ModelCard, width: int, height: int, steps: int, images: int) -> int:
    """The work of a job in hundredths of a credit, counted from what the GPU ran."""
    relative = images * (width * height * steps) / (card.default_width * card.default_height * card.default_steps)
    return max(1, math.ceil(relative * 100 - 1e-9))


def arrivals(rng: random.Random) -> list[tuple[float, int, dict]]:
    """(second of the day, member, request) for every job any member sends."""
    out = []
    for m in range(MEMBERS):
        user = 5000 + m
        heavy = m < HEAVY
        for _ in range(rng.randint(14, 22) if heavy else rng.randint(1, 6)):
            model = rng.choice(list(CARDS))
            card = CARDS[model]
            sides = range(card.min_side, card.max_side + 1, 64)
            request = {
                "model": model,
                "width": rng.choice(sides),
                "height": rng.choice(sides),
                "steps": rng.choice((8, 15, 20, 25, 30, 40, 50)),
                "num_images": rng.choice((1, 2, 4, 4)),
            }
            out.append((rng.uniform(0, 24 * 3600), user, request))
    return sorted(out, key=lambda a: a[0])


async def test_a_simulated_day_charges_the_work_done_and_keeps_the_lanes_fair(settings, engine, clock, db_path):
    # 20 fast credits and 15 relax credits a day, four jobs at once.
    services = build_services(
        settings.model_copy(update={"default_credits_per_day": 20, "default_relax_credits_per_day": 15,
                                    "default_max_concurrent": 4, "default_max_side": 1024}),
        engine, clock=clock,
    )
    jobs = services.jobs
    rng = random.Random(SEED)
    start = clock.now
    events: list[tuple[float, int, str, object]] = []  # (second, order, kind, payload)
    for n, (at, user, request) in enumerate(arrivals(rng)):
        heapq.heappush(events, (at, n, "arrive", (user, request)))
    order = len(events)

    created: dict[int, int] = {}  # job id -> lane
    refused = Counter()
    ran: list[Ran] = []
    picks = 0
    relax_picks = 0
    running: int | None = None
    ahead: int | None = None  # dispatched, not started
    gpu_free_at = 0.0

    def read(sql: str, *params):
        with sqlite3.connect(db_path) as conn:
            return conn.execute(sql, params).fetchall()

    async def pick() -> int | None:
        """The feeder's step: the next job in fair order, dispatched; checks the lane and the member order."""
        nonlocal picks, relax_picks
        batch = await jobs.next_for_dispatch(1)
        if not batch:
            return None
        job = batch[0]
        pending = read("SELECT id, user_id, lane FROM job WHERE status = 'queued' AND dispatched_at IS NULL")
        in_flight = Counter(u for (u,) in read(
            "SELECT user_id FROM job WHERE status = 'running' OR (status = 'queued' AND dispatched_at IS NOT NULL)"))
        # A relax job only when no fast job waits.
        if job.lane == 1:
            relax_picks += 1
            assert not [p for p in pending if p[2] == 0], f"relax job {job.id} picked while fast jobs wait"
        # The member's oldest pending job of its lane, and members alternate: a member with a job in flight is not
        # served again while another member waiting in that lane has none in flight.
        mine = [p[0] for p in pending if p[1] == job.user_id and p[2] == job.lane]
        assert job.id == min(mine)
        if in_flight[job.user_id] >= 1:
            others = {p[1] for p in pending if p[2] == job.lane and p[1] != job.user_id}
            starved = [u for u in others if in_flight[u] == 0]
            assert not starved, f"job {job.id} of {job.user_id} (in flight) picked before members {starved}"
        assert await jobs.mark_dispatched(job.id)
        picks += 1
        return job.id

    async def run_next(now: float) -> None:
        """The GPU takes the job dispatched ahead (or picks one) and the feeder refills the slot."""
        nonlocal running, ahead, gpu_free_at, order
        job_id = ahead if ahead is not None else await pick()
        ahead = None
        if job_id is None:
            return
        job = await jobs.start(job_id, worker="gpu-0")
        running = job_id
        card = CARDS[job.model]
        seconds = work_units(card, job.width, job.height, job.steps, job.num_images) / 100 * SECONDS_PER_CREDIT
        ok = rng.random() > 0.1
        ran.append(Ran(job_id, job.user_id, job.model, job.width, job.height, job.steps, job.num_images, ok))
        gpu_free_at = now + seconds
        order += 1
        heapq.heappush(events, (gpu_free_at, order, "done", (job_id, ok)))
        ahead = await pick()

    while events:
        at, _, kind, payload = heapq.heappop(events)
        clock.now = start + timedelta(seconds=at)
        if kind == "arrive":
            user, request = payload  # type: ignore[misc]
            before = read("SELECT used, relax_used, active FROM user_quota WHERE user_id = ?", user)
            try:
                job = await jobs.create(GUILD, CHANNEL, user, [], prompt="a fox", card=CARDS[request["model"]],
                                        check=CARDS[request["model"]].check, **request)
            except (QuotaExceeded, TooManyActiveJobs) as e:
                refused[type(e).__name__] += 1
                # A refusal charges nothing.
                assert read("SELECT used, relax_used, active FROM user_quota WHERE user_id = ?", user) == before
                continue
            created[job.id] = job.lane
            assert job.cost == work_units(CARDS[request["model"]], request["width"], request["height"],
                                          request["steps"], request["num_images"])
            if running is None:
                await run_next(at)
            elif ahead is None:
                ahead = await pick()
        else:
            job_id, ok = payload  # type: ignore[misc]
            if ok:
                await jobs.succeed(job_id, [])
            else:
                await jobs.fail(job_id, "the simulated GPU failed")
            running = None
            await run_next(at)

    # Every job made was run and finished; nothing is left reserved or counted active.
    assert sorted(r.job_id for r in ran) == sorted(created)
    states = Counter(s for (s,) in read("SELECT status FROM job"))
    assert states == Counter({"succeeded": sum(r.ok for r in ran), "failed": sum(not r.ok for r in ran)})
    assert read("SELECT count(*) FROM job WHERE charge_state = 'reserved'") == [(0,)]
    assert read("SELECT count(*) FROM user_quota WHERE active != 0") == [(0,)]

    # Charged (committed) == the work the GPU did for the jobs that succeeded; refunded == the failed ones' work.
    done = sum(work_units(CARDS[r.card], r.width, r.height, r.steps, r.images) for r in ran if r.ok)
    failed = sum(work_units(CARDS[r.card], r.width, r.height, r.steps, r.images) for r in ran if not r.ok)
    assert read("SELECT sum(cost) FROM job WHERE charge_state = 'committed'") == [(done,)]
    assert read("SELECT sum(cost) FROM job WHERE charge_state = 'refunded'") == [(failed,)]
    # Each member's usage in their current window is exactly the committed cost charged to it, per lane: every
    # refund gave back its job's units to the lane that paid them, once.
    per_window: dict[tuple[int, int], int] = defaultdict(int)
    for user, lane, cost in read(
        "SELECT j.user_id, j.lane, j.cost FROM job AS j JOIN user_quota AS q ON q.user_id = j.user_id "
        "AND q.guild_id = j.guild_id WHERE j.charge_state = 'committed' "
        "AND j.charge_window_started_at = q.window_started_at"
    ):
        per_window[(user, lane)] += cost
    for user, used, relax_used in read("SELECT user_id, used, relax_used FROM user_quota"):
        assert (used, relax_used) == (per_window[(user, 0)], per_window[(user, 1)]), user

    # The day was a real mix: both lanes served, some refusals, jobs of both models.
    assert picks == len(created) and relax_picks >= 5 and sum(created.values()) == relax_picks
    assert refused["QuotaExceeded"] >= 1
    assert {r.card for r in ran} == set(CARDS) and len(ran) >= 100
