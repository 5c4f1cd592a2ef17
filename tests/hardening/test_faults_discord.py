"""Discord failing: 429 with retry_after, 5xx (before and after doing the work), 10062 Unknown interaction, 50027
Invalid Webhook Token and 413 Request entity too large, injected by the fake Discord into the real `python -m bot`
(embedded nats-server, local fake-engine worker making noise images, so a grid is ~50 KB). One bot serves the module;
each test uses its own members. For every job: one grid in the channel, or a refund its owner can read about."""

from __future__ import annotations

import asyncio
import time

import pytest
import pytest_asyncio

from tests.support.fakediscord import INVALID_WEBHOOK_TOKEN, UNKNOWN_INTERACTION, FakeDiscord
from tests.support.faultkit import BotProcess, WriteLock, grid_posts, refund_notices, tally, wait_until
from tests.support.reliability import soak_runs

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.slow]

FINAL = ("posted", "failed", "cancelled")
CALLBACK = r"^/interactions/\d+/[^/]+/callback$"
ORIGINAL = r"^/webhooks/\d+/[^/]+/messages/@original$"


class DiscordWorld:
    def __init__(self, fd: FakeDiscord, bot: BotProcess):
        self.fd = fd
        self.bot = bot
        self.art = fd.add_channel("art")
        self._n = 0

    @property
    def post_path(self) -> str:
        return rf"^/channels/{self.art['id']}/messages$"

    @property
    def edit_path(self) -> str:
        return rf"^/channels/{self.art['id']}/messages/\d+$"

    def member(self) -> dict:
        self._n += 1
        return self.fd.add_user(f"member{self._n}")

    async def imagine(self, user: dict, prompt: str, *, answered: bool = True, **options):
        options.setdefault("steps", 4)
        record = await self.fd.slash(user, self.art, "imagine", prompt=prompt, **options)
        if answered:
            await self.fd.wait_for(lambda: record.original_id, 20, f"the answer to /imagine {prompt!r}")
        return record

    def rows_of(self, *users: dict) -> dict[int, dict]:
        ids = {int(u["id"]) for u in users}
        return {i: r for i, r in self.bot.rows().items() if r["user_id"] in ids}

    async def settle(self, *users: dict, expect: int, timeout: float = 60.0):
        """Wait until the members' `expect` jobs are final and shown, then classify them."""
        def done():
            rows = self.rows_of(*users)
            if len(rows) < expect or any(r["status"] not in FINAL for r in rows.values()):
                return None
            posts = grid_posts(self.fd, self.art["id"])
            told = refund_notices(self.fd)
            shown = all(posts.get(i) if r["status"] == "posted" else i in told for i, r in rows.items())
            return rows if shown else None

        try:
            rows = await wait_until(done, timeout, 0.2, "the members' jobs to finish and be shown")
        except AssertionError:
            rows = self.rows_of(*users)
        await asyncio.sleep(0.5)  # a duplicate would show up now
        return tally(rows, grid_posts(self.fd, self.art["id"]), told=refund_notices(self.fd))

    def used(self, user: dict) -> int:
        with self.bot.db() as con:
            row = con.execute("select sum(used) from user_quota where user_id = ?", (int(user["id"]),)).fetchone()
        return row[0] or 0


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("discord-faults")
    async with FakeDiscord() as fd:
        bot = BotProcess(fd, root / "data", root / "bot.log", worker_args="--fake-engine 0.01 --fake-noise")
        await asyncio.to_thread(bot.sync)
        bot.start()
        try:
            await bot.ready()
            yield DiscordWorld(fd, bot)
        except BaseException:
            print(bot.log()[-5000:])
            raise
        finally:
            await asyncio.to_thread(bot.stop)
            print(bot.log()[-2000:])


@pytest.fixture(autouse=True)
def no_faults(world):
    world.fd.clear_faults()
    yield
    world.fd.clear_faults()


async def test_429_with_retry_after_on_every_route(world, reliability):
    """Each run: Discord answers 429 (with retry_after, as it does) once on the interaction callback, on the edits of
    the queued message, on the result post and on the channel edits. discord.py waits and tries again: one grid."""
    runs = soak_runs(2, 10)
    user = world.member()
    for i in range(runs):
        for method, path in (("POST", CALLBACK), ("PATCH", ORIGINAL), ("POST", world.post_path),
                             ("PATCH", world.edit_path)):
            world.fd.rate_limit(method, path, retry_after=0.3, count=1)
        await world.imagine(user, f"a red circle {i}")
        await world.settle(user, expect=i + 1)
    t = await world.settle(user, expect=runs)
    limited = [c for c, status in world.fd.faulted if status == 429]
    print(f"429: {t}; {len(limited)} requests rate-limited")
    reliability.record("Discord 429 with retry_after (callback, edits, result post)", runs=runs,
                       lost=len(t.lost), duplicated=len(t.duplicated))
    assert len(limited) >= 2 * runs
    assert t.lost == [] and t.duplicated == [] and len(t.delivered) == runs, str(t)


async def test_5xx_on_the_result_post(world, reliability):
    """The result post fails with a 5xx: 500 and 502 before Discord did anything (discord.py retries), 500 after it
    created the message (the retry carries the same nonce, so Discord returns the first message), and 503 (twice in
    the long run; discord.py gives up at once, the bot tries again a few seconds later). One grid each time."""
    twice = soak_runs(1, 2)
    cases = [(500, False, 1), (502, False, twice), (500, True, 1), (503, False, twice)]
    runs = soak_runs(1, 3)
    user = world.member()
    n = 0
    for _ in range(runs):
        for status, apply, count in cases:
            world.fd.inject("POST", world.post_path, status, {"message": f"{status}: injected", "code": 0},
                            count=count, apply=apply, when=lambda c: bool(c.files))
            await world.imagine(user, f"a blue square {n} ({status}{' after doing it' if apply else ''})")
            n += 1
            await world.settle(user, expect=n, timeout=60)
    t = await world.settle(user, expect=n)
    print(f"5xx: {t}; faulted {[s for _, s in world.fd.faulted]}")
    reliability.record("Discord 5xx on the result post (500/502, 500 after creating it, 503)", runs=n,
                       lost=len(t.lost), duplicated=len(t.duplicated))
    assert t.lost == [] and t.duplicated == [] and len(t.delivered) == n, str(t)


async def test_5xx_on_the_interaction_answer(world, reliability):
    """The answer to /imagine fails with 500: before Discord acknowledged it (the webhook client tries again within
    the 3 s), and after (the retry is told "already acknowledged"; the bot picks up the message that exists)."""
    runs = soak_runs(1, 5)
    user = world.member()
    n = 0
    for _ in range(runs):
        for apply in (False, True):
            world.fd.inject("POST", CALLBACK, 500, {"message": "500: injected", "code": 0}, count=1, apply=apply)
            await world.imagine(user, f"a green star {n}")
            n += 1
            await world.settle(user, expect=n)
    t = await world.settle(user, expect=n)
    print(f"5xx on the answer: {t}")
    reliability.record("Discord 5xx on the interaction answer (before and after acknowledging)", runs=n,
                       lost=len(t.lost), duplicated=len(t.duplicated))
    assert t.lost == [] and t.duplicated == [], str(t)
    assert len(t.delivered) == n, str(t)


async def test_10062_unknown_interaction_refunds_with_a_note(world, reliability):
    """The interaction expired before the bot answered (10062 Unknown interaction): the member saw "the application
    did not respond", so the job is withdrawn and refunded, and a note in the channel tells them nothing was
    charged. Nothing is posted for it later."""
    runs = soak_runs(2, 10)
    user = world.member()
    for i in range(runs):
        world.fd.inject("POST", CALLBACK, 404, {"message": "Unknown interaction", "code": UNKNOWN_INTERACTION})
        await world.imagine(user, f"a pink heart {i}", answered=False)
        await world.settle(user, expect=i + 1, timeout=30)
    await asyncio.sleep(1.0)  # a job that ran anyway would be posted by now
    t = await world.settle(user, expect=runs)
    print(f"10062: {t}; used {world.used(user)}")
    reliability.record("Discord 10062 Unknown interaction (expired before the answer)", runs=runs,
                       failures=int(world.used(user) != 0), lost=len(t.lost), duplicated=len(t.duplicated))
    assert t.lost == [] and t.duplicated == [] and len(t.refunded) == runs, str(t)
    assert world.used(user) == 0
    notes = [m for m in world.fd.channel_messages(world.art["id"]) if m["content"] == f"<@{user['id']}>"]
    assert len(notes) == runs and not world.fd.pinged()


async def test_50027_invalid_webhook_token_falls_back_to_the_bot_token(world, reliability):
    """The interaction's token is refused (50027 Invalid Webhook Token) for every edit of the queued message: the
    bot edits it through the channel with its own token; the result is posted once and the message says Done."""
    runs = soak_runs(2, 10)
    user = world.member()
    world.fd.inject("PATCH", ORIGINAL, 401, {"message": "Invalid Webhook Token", "code": INVALID_WEBHOOK_TOKEN},
                    count=None)
    records = []
    for i in range(runs):
        records.append(await world.imagine(user, f"a white square {i}", steps=4))
    t = await world.settle(user, expect=runs)
    done = [world.fd.messages[r.original_id]["embeds"][0]["description"] for r in records]
    refused = [c for c, status in world.fd.faulted if status == 401]
    print(f"50027: {t}; {len(refused)} edits refused; {done}")
    reliability.record("Discord 50027 Invalid Webhook Token on edits", runs=runs, lost=len(t.lost),
                       duplicated=len(t.duplicated), failures=sum("Done" not in d for d in done))
    assert t.lost == [] and t.duplicated == [] and len(t.delivered) == runs, str(t)
    assert all("Done" in d for d in done), done


async def test_50027_after_a_slow_start_posts_the_queued_message_with_the_bot_token(world, reliability):
    """The database is locked for 2.5 s, so the bot defers ("thinking…"); then the interaction's token is refused
    (50027) when the bot fills in the answer: the queued message is posted in the channel with the bot's token
    instead, and the job goes on to one grid."""
    runs = soak_runs(1, 5)
    user = world.member()
    for i in range(runs):
        world.fd.inject("PATCH", ORIGINAL, 401, {"message": "Invalid Webhook Token", "code": INVALID_WEBHOOK_TOKEN},
                        count=None)
        async with WriteLock(world.bot.data_dir / "bot.db", 2.5):
            record = await world.imagine(user, f"an orange circle {i}", answered=False)
            await world.fd.wait_for(lambda r=record: r.callbacks, 10, "the deferral")
        await world.settle(user, expect=i + 1)
        assert record.callback_types == [5]  # deferred
        world.fd.clear_faults()
    t = await world.settle(user, expect=runs)
    queued = [m for m in world.fd.channel_messages(world.art["id"])
              if "interaction_metadata" not in m and m["embeds"] and "Done" in (m["embeds"][0].get("description") or "")
              and m["embeds"][0]["title"].startswith("an orange circle")]
    print(f"50027 after a deferral: {t}; {len(queued)} queued messages posted with the bot token")
    reliability.record("Discord 50027 on the deferred answer (database locked 2.5 s)", runs=runs,
                       lost=len(t.lost), duplicated=len(t.duplicated), failures=runs - len(queued))
    assert t.lost == [] and t.duplicated == [] and len(t.delivered) == runs, str(t)
    assert len(queued) == runs


async def test_413_upload_too_large_posts_smaller(world, reliability):
    """Discord refuses uploads over 20 KB with 413 although the bot was told the limit is 10 MB: the grid (about
    50 KB of noise) is posted re-encoded smaller, once. With a limit no picture fits, the result is posted without
    it, saying so (the buttons still work)."""
    runs = soak_runs(2, 10)
    user = world.member()
    world.fd.upload_limit = 20_000
    for i in range(runs):
        await world.imagine(user, f"a yellow triangle {i}")
        await world.settle(user, expect=i + 1)
    t1 = await world.settle(user, expect=runs)
    posted = [m for m in world.fd.channel_messages(world.art["id"]) if m["attachments"]
              and m["embeds"] and m["embeds"][0]["title"].startswith("a yellow triangle")]
    sizes = [m["attachments"][0]["size"] for m in posted]
    refused = sum(1 for _, status in world.fd.faulted if status == 413)
    print(f"413: {t1}; posted sizes {sizes}; {refused} uploads refused")
    tiny_user = world.member()
    world.fd.upload_limit = 100
    await world.imagine(tiny_user, "a purple star")
    t2 = await world.settle(tiny_user, expect=1)
    bare = [m for m in world.fd.channel_messages(world.art["id"]) if m["embeds"]
            and m["embeds"][0]["title"].startswith("a purple star") and m["components"] and not m["attachments"]]
    reliability.record("Discord 413 on the result upload (re-encoded smaller)", runs=runs, lost=len(t1.lost),
                       duplicated=len(t1.duplicated), failures=runs - len(sizes))
    reliability.record("Discord 413 even for a thumbnail (posted without the picture, with a note)", runs=1,
                       lost=len(t2.lost), duplicated=len(t2.duplicated), failures=int(len(bare) != 1))
    assert t1.lost == [] and t1.duplicated == [] and len(t1.delivered) == runs, str(t1)
    assert len(sizes) == runs and all(s <= 20_000 for s in sizes), sizes
    assert refused >= runs
    assert t2.lost == [] and t2.duplicated == [] and len(bare) == 1, str(t2)
    assert "too large" in bare[0]["embeds"][0]["description"]


async def test_everything_at_once_under_load(world, reliability):
    """A burst of jobs from several members while Discord randomly rate-limits, fails with 5xx (sometimes after
    doing the work) and refuses the interaction token: every job is posted exactly once or refunded with a note."""
    n = soak_runs(6, 40)
    members = [world.member() for _ in range(4)]
    world.fd.rate_limit("*", r"^/(channels|webhooks)/", retry_after=0.2, count=n // 2)
    world.fd.inject("POST", world.post_path, 502, count=n // 4, when=lambda c: bool(c.files))
    world.fd.inject("POST", world.post_path, 500, count=n // 4, apply=True, when=lambda c: bool(c.files))
    world.fd.inject("PATCH", ORIGINAL, 401, {"message": "Invalid Webhook Token", "code": INVALID_WEBHOOK_TOKEN},
                    count=n // 2)
    t0 = time.monotonic()
    for i in range(n):
        await world.imagine(members[i % len(members)], f"burst {i}")
    t = await world.settle(*members, expect=n, timeout=60 + 3 * n)
    print(f"mixed faults: {t} in {time.monotonic() - t0:.1f} s; faulted {len(world.fd.faulted)} requests")
    reliability.record("Discord mixed faults under a burst (429, 5xx, 50027)", runs=n, lost=len(t.lost),
                       duplicated=len(t.duplicated))
    assert t.lost == [] and t.duplicated == [], str(t)
    assert len(t.delivered) + len(t.refunded) == n
