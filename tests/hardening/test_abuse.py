"""Abuse: a member spamming /imagine and the buttons, other people's 🗑️ and ✖, /mod without being a moderator,
banned members.

- Spam is held by three brakes: the per-member cooldown (IMAGINE_COOLDOWN_SECONDS), the concurrency limit (jobs
  queued or running at once) and the daily quota. Whatever the mix of commands, clicks, finished jobs and time,
  no two jobs of a member start within the cooldown, the active jobs never exceed the limit, the usage never exceeds
  the allowance, every refusal is a clear ephemeral message, and only accepted jobs are charged.
- The same holds for simultaneous requests (the checks run inside the job's write transaction).
- 🗑️ and ✖ of someone else's job are refused (the owner's and a moderator's work).
- Every /mod subcommand is refused to a non-moderator invoked directly, whatever Discord's client would show.
- A banned member is refused for /imagine, every generating button and the remix modal.
"""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import discord
import pytest
from sqlalchemy import text

from bot.db.models import JobStatus
from bot.errors import OnCooldown, QuotaExceeded, TooManyActiveJobs
from bot.ui.buttons import job_custom_id
from tests.bot.conftest import CHANNEL, GUILD, FakeClock
from tests.support.hostile import HostileWorld, Outcome, leaf_commands, open_test_services
from tests.support.reliability import soak_runs

COOLDOWN = 5.0
PER_DAY = 4  # credits: a grid at the defaults is 4, a U or V click about 1
AT_ONCE = 2


class ClockWorld(HostileWorld):
    """A HostileWorld whose services read a clock the test moves."""

    def __init__(self, tmp_path: Path, template: Path, **settings: Any):
        self.clock = FakeClock(datetime(2026, 1, 10, 12, 0, tzinfo=UTC))
        super().__init__(tmp_path, template, **settings)

    def _service_kwargs(self) -> dict[str, Any]:
        return {"clock": self.clock}


def reason_of(outcome: Outcome) -> str:
    """Which brake refused the request, from the text the member got."""
    content = outcome.replies[0].content if outcome.replies else ""
    if "a little fast" in content:
        assert "<t:" in content and ":R>" in content, content  # when to try again, in the reader's own clock
        return "cooldown"
    if "queued or running" in content:
        return "concurrency"
    if "daily credits" in content or "credits left" in content:
        return "quota"
    return "other: " + content[:120]


@pytest.fixture
def spam_world(tmp_path, migrated_template):
    # No relax lane: the quota brake is met when the fast credits are spent (tests/bot/services/test_relax_lane.py
    # covers the relax lane).
    with ClockWorld(tmp_path, migrated_template, imagine_cooldown_seconds=COOLDOWN, default_credits_per_day=PER_DAY,
                    default_relax_credits_per_day=0,
                    default_max_concurrent=AT_ONCE) as hw:
        yield hw


def test_spam_of_imagine_and_buttons_is_held_by_cooldown_concurrency_and_quota(spam_world, reliability):
    """Random spam of /imagine, 🔄 / U / V / ✏️ clicks, finished jobs and passing time, checked after every step."""
    hw, w = spam_world, spam_world.w
    rng = random.Random(8)
    steps = soak_runs(120, 1500)
    counts = {"accepted": 0, "cooldown": 0, "concurrency": 0, "quota": 0}
    failures = 0
    started_at: list[datetime] = []
    # A posted grid of another member whose buttons alice spams (her clicks make her own jobs).
    hw.run(hw.slash(w.bob, "imagine", {"prompt": "a blue square"}))
    grid_job = hw.run(w.latest_job())
    grid = hw.run(w.finish(grid_job.id))
    buttons = [job_custom_id(grid_job.id, a, i) for a in ("u", "vs", "vS") for i in range(4)]
    buttons += [job_custom_id(grid_job.id, "r")]
    try:
        for _ in range(steps):
            move = rng.random()
            if move < 0.02:  # a new day: the daily allowance comes back
                hw.clock.advance(days=1, seconds=1)
                continue
            if move < 0.15:
                hw.clock.advance(seconds=rng.choice([0.5, 1, 2, 4.9, 5, 6, 30]))
                continue
            if move < 0.3:  # the worker finishes alice's oldest active job
                active = [j for j in hw.run(w.services.jobs.queue(w.guild.id)) if j.user_id == w.alice.id]
                if active:
                    hw.run(w.services.jobs.start(active[0].id, worker="test"))
                    hw.run(w.services.jobs.fail(active[0].id, "the worker gave up") if rng.random() < 0.2
                           else w.finish(active[0].id))
                continue
            if move < 0.55:
                outcome = hw.run(hw.slash(w.alice, "imagine", {"prompt": "spam", "count": rng.randint(1, 4)}))
            elif move < 0.9:
                outcome = hw.run(hw.click(w.alice, grid, rng.choice(buttons)))
            else:
                outcome = hw.run(hw.submit_remix(w.alice, grid_job.id, "spam again"))
            ok = not outcome.crashes and not outcome.problems and outcome.replies
            if outcome.new_jobs:
                counts["accepted"] += 1
                started_at.append(hw.clock.now)
            else:
                reason = reason_of(outcome)
                ok = ok and outcome.refused and outcome.charged == 0 and not reason.startswith("other")
                counts[reason] = counts.get(reason, 0) + 1
            # The brakes hold after every step.
            jobs = hw.run(w.services.jobs.history(w.guild.id, w.alice.id, 10_000))
            active = [j for j in jobs if j.status in (JobStatus.QUEUED, JobStatus.RUNNING)]
            status = hw.run(w.services.quota.status(w.guild.id, w.alice.id, []))
            # What the open window holds: the charges of the jobs made in it (older windows are settled).
            window = status.window_started_at if status.resets_at and status.resets_at > hw.clock.now else None
            charged = sum(j.cost for j in jobs if str(j.charge_state) in ("reserved", "committed")
                          and window is not None and j.created_at >= window)
            gaps = [(b - a).total_seconds() for a, b in zip(started_at, started_at[1:], strict=False)]
            ok = ok and len(active) <= AT_ONCE and status.used <= PER_DAY * 100 and min(gaps, default=COOLDOWN) >= COOLDOWN
            ok = ok and status.used == charged
            if not ok:
                failures += 1
                raise AssertionError(f"{outcome!r} active={len(active)} used={status.used} charged={charged} "
                                     f"gaps={gaps[-3:]}")
    finally:
        refused = sum(v for k, v in counts.items() if k != "accepted")
        reliability.record("abuse: spam of /imagine and buttons (cooldown, concurrency, quota)",
                           runs=max(1, counts["accepted"] + refused), failures=failures,
                           note=", ".join(f"{k} {v}" for k, v in counts.items()))
    # Every brake was actually met.
    assert counts["accepted"] and counts["cooldown"] and counts["concurrency"] and counts["quota"], counts


async def test_simultaneous_requests_let_exactly_the_allowed_number_through(tmp_path, migrated_template, reliability):
    """Twenty requests of one member at the same moment: the cooldown lets one through, the concurrency limit three,
    the quota as many as fit; the rest are refused and charge nothing."""
    clock = FakeClock(datetime(2026, 1, 10, 12, 0, tzinfo=UTC))
    async with open_test_services(tmp_path, migrated_template, clock=clock, default_images_per_day=20,
                                  default_relax_credits_per_day=0,
                                  default_max_concurrent=3) as (_, services):
        await _bursts(services, reliability)


async def _bursts(services, reliability) -> None:
    rounds = soak_runs(3, 30)
    failures = 0
    total = 0

    async def burst(user: int, n: int, **kw) -> tuple[int, list[BaseException]]:
        results = await asyncio.gather(
            *(services.jobs.create(GUILD, CHANNEL, user, [], prompt="x", steps=4, width=64, height=64, **kw)
              for _ in range(n)),
            return_exceptions=True,
        )
        ok = [r for r in results if not isinstance(r, BaseException)]
        return len(ok), [r for r in results if isinstance(r, BaseException)]

    for r in range(rounds):
        user = 100 + 10 * r
        cases = [
            (user, {"cooldown": 5.0, "num_images": 1}, 1, OnCooldown),
            (user + 1, {"num_images": 1}, 3, TooManyActiveJobs),  # settings fixture: 3 jobs at once
            (user + 2, {"num_images": 4, "cooldown": 0.0}, None, (QuotaExceeded, TooManyActiveJobs)),
        ]
        for uid, kw, expected, refusal in cases:
            await services.quota.set_limit(GUILD, uid, 1, max_concurrent=1000 if expected is None else None)
            made, errors = await burst(uid, 20, **kw)
            total += 20
            status = await services.quota.status(GUILD, uid, [])
            want = expected if expected is not None else 20 // 4  # 20 credits a day, 4 per job (no card: 1 an image)
            good = made == want and all(isinstance(e, refusal) for e in errors) and status.used == made * kw["num_images"] * 100
            failures += not good
            assert good, (uid, kw, made, want, [type(e).__name__ for e in errors], status.used)
    reliability.record("abuse: simultaneous requests of one member", runs=total, failures=failures)


def test_cooldown_says_when_and_lapses(spam_world):
    """The cooldown refusal names the moment to try again as a Discord relative timestamp; after it, /imagine works."""
    hw, w = spam_world, spam_world.w
    first = hw.run(hw.slash(w.alice, "imagine", {"prompt": "one", "count": 1}))
    hw.clock.advance(seconds=2)
    second = hw.run(hw.slash(w.alice, "imagine", {"prompt": "two", "count": 1}))
    expected = int((hw.clock.now + timedelta(seconds=3)).timestamp())
    hw.clock.advance(seconds=3)
    third = hw.run(hw.slash(w.alice, "imagine", {"prompt": "three", "count": 1}))
    assert first.new_jobs and third.new_jobs
    assert second.refused and f"<t:{expected}:R>" in second.replies[0].content and second.charged == 0


def test_cooldown_setting_is_documented_and_zero_turns_it_off(tmp_path):
    from bot.config import Settings

    example = (Path(__file__).resolve().parents[2] / ".env.example").read_text()
    assert "IMAGINE_COOLDOWN_SECONDS=" in example
    assert Settings(_env_file=None).imagine_cooldown_seconds > 0
    assert Settings(_env_file=None, imagine_cooldown_seconds=0).imagine_cooldown_seconds == 0
    with pytest.raises(ValueError):
        Settings(_env_file=None, imagine_cooldown_seconds=-1)


@pytest.fixture
def world_hw(tmp_path, migrated_template):
    with HostileWorld(tmp_path, migrated_template) as hw:
        yield hw


def test_someone_elses_delete_and_cancel_are_refused(world_hw, reliability):
    """Bob's 🗑️ on Alice's grid and ✖ on Alice's job are refused and change nothing; Alice's own work, and so do a
    moderator's."""
    hw, w = world_hw, world_hw.w
    rounds = soak_runs(5, 50)
    failures = 0
    for _ in range(rounds):
        queued = hw.run(hw.slash(w.alice, "imagine", {"prompt": "mine", "count": 1}))
        progress = queued.replies[0].message
        job = queued.new_jobs[0]
        by_bob = hw.run(hw.click(w.bob, progress, job_custom_id(job.id, "x")))
        still = hw.run(w.services.jobs.get(job.id))
        ok = by_bob.refused and "not yours" in by_bob.replies[0].content and still.status == JobStatus.QUEUED
        ok = ok and str(still.charge_state) == "reserved"
        by_owner = hw.run(hw.click(w.alice, progress, job_custom_id(job.id, "x")))
        cancelled = hw.run(w.services.jobs.get(job.id))
        ok = ok and by_owner.charged == -100 and cancelled.status == JobStatus.CANCELLED  # a credit given back

        hw.run(hw.slash(w.alice, "imagine", {"prompt": "mine too", "count": 1}))
        other = hw.run(w.latest_job())
        grid = hw.run(w.finish(other.id))
        bob_delete = hw.run(hw.click(w.bob, grid, job_custom_id(other.id, "d")))
        exists = any(m.id == grid.id for m in w.art.history())
        ok = ok and bob_delete.refused and "not yours" in bob_delete.replies[0].content and exists
        hw.run(hw.click(w.alice, grid, job_custom_id(other.id, "d")))
        ok = ok and not any(m.id == grid.id for m in w.art.history())
        failures += not ok
        assert ok, (by_bob.replies, by_owner.replies, bob_delete.replies)
    # A moderator may cancel and delete anyone's.
    queued = hw.run(hw.slash(w.alice, "imagine", {"prompt": "modded", "count": 1}))
    hw.run(hw.click(w.mod, queued.replies[0].message, job_custom_id(queued.new_jobs[0].id, "x")))
    assert hw.run(w.services.jobs.get(queued.new_jobs[0].id)).status == JobStatus.CANCELLED
    reliability.record("abuse: someone else's 🗑️ / ✖ refused", runs=2 * rounds, failures=failures)


def valid_options(command, hw) -> dict[str, Any]:
    """One valid value per option (what Discord's client would let a moderator send)."""
    w = hw.w
    out: dict[str, Any] = {}
    for p in command.parameters:
        t = p.type
        if p.choices:
            out[p.display_name] = p.choices[0].value
        elif t is discord.AppCommandOptionType.string:
            out[p.display_name] = "gore"
        elif t is discord.AppCommandOptionType.integer:
            out[p.display_name] = int(p.min_value or 1)
        elif t is discord.AppCommandOptionType.number:
            out[p.display_name] = float(p.min_value or 1)
        elif t is discord.AppCommandOptionType.boolean:
            out[p.display_name] = True
        elif t is discord.AppCommandOptionType.user:
            out[p.display_name] = w.bob
        elif t is discord.AppCommandOptionType.channel:
            out[p.display_name] = w.other
        elif t is discord.AppCommandOptionType.role:
            out[p.display_name] = a_role(w)
        else:
            raise AssertionError(f"no value for {p.name} ({t})")
    return out


def a_role(w):
    """A role of the guild for role options (`/mod quota role-set`), made once per world."""
    if getattr(w, "artists_role", None) is None:
        w.artists_role = w.guild.create_role("artists")
    return w.artists_role

STATE_TABLES = ["guild_setting", "art_channel", "role_quota", "user_quota", "ban", "blocked_term", "server_style",
                "showcase_setting"]


async def snapshot(w) -> dict[str, list]:
    async with w.services.sessions() as s:
        state = {t: (await s.execute(text(f"select * from {t} order by 1, 2"))).all() for t in STATE_TABLES}
        state["job"] = (await s.execute(text("select id, status, charge_state from job order by id"))).all()
        state["audit"] = (await s.execute(text("select action from audit_log where action != 'mod.denied'"))).all()
    return state


def test_every_mod_subcommand_is_refused_to_a_non_moderator(world_hw, reliability):
    """Each /mod subcommand, sent directly by a member whose client would not even show it, and by a member whom
    the server's admins let see /mod: refused with a clear message, nothing changes, the attempt is audited."""
    hw, w = world_hw, world_hw.w
    hw.run(hw.slash(w.alice, "imagine", {"prompt": "a job to cancel", "count": 1}))
    job = hw.run(w.latest_job())
    mods = [c for c in leaf_commands(w.bot.tree) if c.root_parent is not None and c.root_parent.name == "mod"]
    assert len(mods) >= 15, [c.qualified_name for c in mods]
    synced = hw.run(w.bot.tree.fetch_commands())
    mod_id = next(c.id for c in synced if c.name == "mod")
    w.guild.set_command_permissions(mod_id, {w.bob: True})  # bob's client shows /mod; alice's does not
    before = hw.run(snapshot(w))
    denied_before = len([e for e in hw.run(w.services.audit.recent(w.guild.id, limit=1000)) if e.action == "mod.denied"])
    runs = failures = 0
    for command in mods:
        options = valid_options(command, hw)
        if command.qualified_name == "mod queue cancel":
            options["job"] = job.id
        for member in (w.alice, w.bob):
            outcome = hw.run(hw.slash(member, command.qualified_name, options))
            runs += 1
            ok = (not outcome.crashes and not outcome.problems and outcome.refused
                  and "only moderators" in outcome.replies[0].content.lower())
            failures += not ok
            assert ok, (command.qualified_name, member.name, outcome)
    assert hw.run(snapshot(w)) == before
    denied = [e for e in hw.run(w.services.audit.recent(w.guild.id, limit=1000)) if e.action == "mod.denied"]
    assert len(denied) - denied_before == runs
    # The same commands work for the moderator (so the refusals above were about rights, not about the options).
    for command in mods:
        options = valid_options(command, hw)
        if command.qualified_name == "mod queue cancel":
            options["job"] = job.id
        outcome = hw.run(hw.slash(w.mod, command.qualified_name, options))
        assert not outcome.crashes and not outcome.problems and "only moderators" not in outcome.replies[0].content
    reliability.record("abuse: /mod subcommands by non-moderators", runs=runs, failures=failures,
                       note=f"{len(mods)} subcommands x 2 members")


def test_banned_member_is_refused_for_imagine_and_every_generating_button(world_hw, reliability):
    """After a ban, /imagine, U, V subtle, V strong, 🔄, ✏️ (opening and submitting) are refused with the reason and
    charge nothing — also on the member's own results from before the ban. ℹ️, 🗑️ and ✖ of their own jobs stay
    allowed (they read or remove, never generate)."""
    hw, w = world_hw, world_hw.w
    hw.run(hw.slash(w.alice, "imagine", {"prompt": "before the ban"}))
    job = hw.run(w.latest_job())
    grid = hw.run(w.finish(job.id))
    queued = hw.run(hw.slash(w.alice, "imagine", {"prompt": "still waiting", "count": 1}))
    hw.run(w.services.moderation.ban(w.guild.id, w.alice.id, w.mod.id, reason="spamming <@&1> @everyone"))
    attempts: list[tuple[str, Outcome]] = [("/imagine", hw.run(hw.slash(w.alice, "imagine", {"prompt": "after"})))]
    for action in ("u", "vs", "vS"):
        for i in range(4):
            attempts.append((f"{action}{i}", hw.run(hw.click(w.alice, grid, job_custom_id(job.id, action, i)))))
    attempts.append(("🔄", hw.run(hw.click(w.alice, grid, job_custom_id(job.id, "r")))))
    attempts.append(("✏️", hw.run(hw.click(w.alice, grid, job_custom_id(job.id, "e")))))
    attempts.append(("✏️ submit", hw.run(hw.submit_remix(w.alice, job.id, "sneaky"))))
    failures = 0
    for what, outcome in attempts:
        ok = (not outcome.crashes and not outcome.problems and outcome.refused and outcome.charged == 0
              and "banned" in outcome.replies[0].content and "spamming" in outcome.replies[0].content
              and "@everyone" not in outcome.replies[0].content.replace("@\u200beveryone", ""))
        failures += not ok
        assert ok, (what, outcome)
    # Reading and removing their own things still works.
    info = hw.run(hw.click(w.alice, grid, job_custom_id(job.id, "i")))
    assert info.replies and info.replies[0].embeds
    cancel = hw.run(hw.click(w.alice, queued.replies[0].message, job_custom_id(queued.new_jobs[0].id, "x")))
    assert cancel.charged == -100  # one image at the card's defaults: a credit, given back
    reliability.record("abuse: banned member refused for /imagine and generating buttons", runs=len(attempts),
                       failures=failures)
