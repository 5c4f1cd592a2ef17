"""Job service: creation, the state machine, fair order and the recovery queries."""

from __future__ import annotations

from datetime import timedelta

import pytest

from bot.db.models import ChargeState, JobStatus
from bot.errors import IllegalTransition, InvalidRequest, JobNotFound, NotJobOwner, OnCooldown, SourceImageNotFound
from bot.services.jobs import TRANSITIONS, NewImage
from bot.services.quota import Caps
from tests.bot.conftest import CHANNEL, GUILD, MOD

A, B, C = 101, 102, 103


async def make_job(services, user=A, guild=GUILD, **kw):
    kw.setdefault("prompt", "a lighthouse at dusk")
    kw.setdefault("num_images", 1)
    return await services.jobs.create(guild, CHANNEL, user, [], **kw)


async def finished_job(services, user=A, n=2):
    job = await make_job(services, user=user, num_images=n)
    await services.jobs.start(job.id, worker="w1")
    images = []
    for i in range(n):
        path, sha = services.images.save(job.id, i, b"\x89PNG fake " + bytes([i]))
        images.append((i, job.seed + i, path, sha))
    return await services.jobs.succeed(job.id, images)


@pytest.fixture
async def roomy(services):
    """Generous limits so ordering tests can queue many jobs (the operator's caps raised to match)."""
    services.quota.caps = Caps(images_per_day=1000 * 100, max_concurrent=100)  # 1,000 credits
    await services.moderation.set_guild_defaults(GUILD, MOD, images_per_day=1000 * 100, max_concurrent=100)
    return services


# --- creation ----------------------------------------------------------------------------------------------------
async def test_create_stores_every_request_parameter(services):
    """All parameters given to create come back from get, and to_request rebuilds the same request."""
    job = await make_job(
        services,
        prompt="a cat",
        negative_prompt="blurry",
        seed=7,
        steps=30,
        guidance=5.5,
        width=640,
        height=384,
        scheduler="euler_a",
        num_images=2,
        timeline=True,
        model="tiny",
    )
    got = await services.jobs.get(job.id)
    assert got == job
    req = got.to_request()
    assert (req.prompt, req.negative_prompt, req.seed, req.steps, req.guidance, req.width, req.height) == (
        "a cat",
        "blurry",
        7,
        30,
        5.5,
        640,
        384,
    )
    assert (req.scheduler, req.num_images, req.mode, req.timeline, req.model) == ("euler_a", 2, "txt2img", True, "tiny")
    assert (got.status, got.charge_state, got.cost, got.guild_id, got.channel_id, got.user_id) == (
        JobStatus.QUEUED,
        ChargeState.RESERVED,
        200,  # without a model card: one credit (100 units) an image
        GUILD,
        CHANNEL,
        A,
    )


async def test_create_draws_a_seed_when_none_is_given(services):
    """Two jobs without a seed get seeds in range, stored on the job."""
    seeds = {(await make_job(services)).seed for _ in range(2)}
    assert all(0 <= s < 2**32 for s in seeds)


async def test_out_of_range_parameter_is_refused_with_its_name(services):
    """A width that is not a multiple of 8 raises InvalidRequest naming the field; nothing is charged."""
    with pytest.raises(InvalidRequest, match="`width` is 500") as err:
        await make_job(services, width=500)
    assert err.value.field == "width"
    assert (await services.quota.status(GUILD, A, [])).used == 0


async def test_variation_references_its_source_image(services):
    """A variation stores the source job and image index, not bytes."""
    src = await finished_job(services)
    var = await make_job(
        services, mode="variation", prompt=src.prompt, source_job_id=src.id, source_image_index=1, strength=0.7
    )
    assert (var.mode, var.source_job_id, var.source_image_index, var.strength) == ("variation", src.id, 1, 0.7)
    image = await services.jobs.get_image(var.source_job_id, var.source_image_index)
    assert services.images.read(image.path, image.sha256).startswith(b"\x89PNG")


async def test_variation_of_a_missing_image_is_refused(services):
    """Pointing at an image index the source job does not have raises SourceImageNotFound; nothing charged."""
    src = await finished_job(services, n=2)
    before = (await services.quota.status(GUILD, A, [])).used
    with pytest.raises(SourceImageNotFound):
        await make_job(services, mode="upscale", source_job_id=src.id, source_image_index=3)
    assert (await services.quota.status(GUILD, A, [])).used == before


async def test_variation_without_a_source_is_refused(services):
    """mode=variation without a source job raises InvalidRequest."""
    with pytest.raises(InvalidRequest, match="needs a source image"):
        await make_job(services, mode="variation")


# --- state machine -----------------------------------------------------------------------------------------------
async def test_happy_path_reaches_posted(services):
    """queued → running → succeeded → posted, with images, worker and message recorded."""
    job = await finished_job(services, n=2)
    assert job.status is JobStatus.SUCCEEDED and job.worker == "w1"
    assert [(i.index, i.seed) for i in job.images] == [(0, job.seed), (1, job.seed + 1)]
    assert await services.jobs.mark_posted(job.id, CHANNEL, 555) is True
    posted = await services.jobs.get(job.id)
    assert (posted.status, posted.posted_channel_id, posted.posted_message_id) == (JobStatus.POSTED, CHANNEL, 555)
    assert posted.posted_at is not None and posted.has_images


async def test_mark_posted_happens_exactly_once(services):
    """The second mark_posted returns False and keeps the first message."""
    job = await finished_job(services)
    assert await services.jobs.mark_posted(job.id, CHANNEL, 1) is True
    assert await services.jobs.mark_posted(job.id, CHANNEL, 2) is False
    assert (await services.jobs.get(job.id)).posted_message_id == 1


@pytest.mark.parametrize(
    ("setup", "action", "from_status", "to_status"),
    [
        ([], "succeed", "queued", "succeeded"),
        ([], "post", "queued", "posted"),
        (["start", "succeed"], "start", "succeeded", "running"),
        (["start", "succeed"], "fail", "succeeded", "failed"),
        (["start", "succeed"], "cancel", "succeeded", "cancelled"),
        (["cancel"], "start", "cancelled", "running"),
        (["cancel"], "cancel", "cancelled", "cancelled"),
        (["start", "fail"], "succeed", "failed", "succeeded"),
        (["start", "fail"], "post", "failed", "posted"),
    ],
)
async def test_illegal_transition_raises_naming_job_and_states(services, setup, action, from_status, to_status):
    """Each illegal move raises IllegalTransition whose message names the job, its state and the target."""
    job = await make_job(services)
    actions = {
        "start": lambda: services.jobs.start(job.id),
        "succeed": lambda: services.jobs.succeed(job.id, []),
        "fail": lambda: services.jobs.fail(job.id, "x"),
        "cancel": lambda: services.jobs.cancel(job.id, by=A),
        "post": lambda: services.jobs.mark_posted(job.id, 1, 2),
    }
    for step in setup:
        await actions[step]()
    with pytest.raises(IllegalTransition) as err:
        await actions[action]()
    assert (err.value.job_id, err.value.from_status, err.value.to_status) == (job.id, from_status, to_status)
    assert f"Job #{job.id} cannot go from `{from_status}` to `{to_status}`" in str(err.value)


async def test_failed_transition_changes_nothing(services):
    """After a refused transition the job is exactly as before."""
    job = await finished_job(services)
    with pytest.raises(IllegalTransition):
        await services.jobs.fail(job.id, "late error")
    assert await services.jobs.get(job.id) == job


def test_final_states_have_no_way_out():
    """No transition starts from failed, cancelled or posted."""
    for target, sources in TRANSITIONS.items():
        assert not {JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.POSTED} & set(sources), target


async def test_unknown_job_raises_job_not_found(services):
    """Acting on a job id that does not exist raises JobNotFound."""
    with pytest.raises(JobNotFound, match="#999"):
        await services.jobs.start(999)
    assert await services.jobs.find(999) is None


async def test_cancel_with_owner_check_refuses_someone_elses_job(services):
    """A member cannot cancel another member's job."""
    job = await make_job(services, user=A)
    with pytest.raises(NotJobOwner):
        await services.jobs.cancel(job.id, by=B, owner_id=B)
    assert (await services.jobs.get(job.id)).status is JobStatus.QUEUED


async def test_fail_records_the_error(services):
    """The error text is stored (for the member's reply) with the finish time."""
    job = await make_job(services)
    failed = await services.jobs.fail(job.id, "model could not be loaded")
    assert (failed.status, failed.error) == (JobStatus.FAILED, "model could not be loaded")
    assert failed.finished_at is not None


async def test_requeue_puts_a_running_job_back_in_the_queue(services):
    """A job whose worker died goes back to queued, undispatched, still holding its reservation."""
    job = await make_job(services)
    await services.jobs.mark_dispatched(job.id)
    await services.jobs.start(job.id, worker="w1")
    back = await services.jobs.requeue(job.id, "worker w1 vanished")
    assert (back.status, back.dispatched_at, back.worker, back.charge_state) == (
        JobStatus.QUEUED,
        None,
        None,
        ChargeState.RESERVED,
    )


async def test_record_attempt_counts_up(services):
    """Each attempt adds one."""
    job = await make_job(services)
    assert [await services.jobs.record_attempt(job.id) for _ in range(3)] == [1, 2, 3]
    assert (await services.jobs.get(job.id)).attempts == 3


async def test_mark_dispatched_happens_once(services):
    """A job is handed to the work queue once; the second call returns False."""
    job = await make_job(services)
    assert await services.jobs.mark_dispatched(job.id) is True
    assert await services.jobs.mark_dispatched(job.id) is False


# --- fair order --------------------------------------------------------------------------------------------------
async def test_fair_order_lets_a_late_member_in_among_the_first_two(roomy):
    """With A holding 20 queued jobs and B 1 (made last), B's job is among the first two dispatched."""
    for _ in range(20):
        await make_job(roomy, user=A)
    b_job = await make_job(roomy, user=B)
    first_two = await roomy.jobs.next_for_dispatch(2)
    assert b_job.id in [j.id for j in first_two]


async def test_fair_order_is_round_robin_across_members(roomy):
    """Jobs alternate between members: A1 B1 C1 A2 B2 A3 …"""
    made = {}
    for user, count in ((A, 3), (B, 2), (C, 1)):
        made[user] = [(await make_job(roomy, user=user)).id for _ in range(count)]
    order = [j.user_id for j in await roomy.jobs.next_for_dispatch(10)]
    assert order == [A, B, C, A, B, A]


async def test_fair_order_counts_jobs_already_in_flight(roomy):
    """A member with a job running waits behind a member who has none."""
    a1 = await make_job(roomy, user=A)
    a2 = await make_job(roomy, user=A)
    b1 = await make_job(roomy, user=B)
    await roomy.jobs.mark_dispatched(a1.id)
    await roomy.jobs.start(a1.id)
    assert [j.id for j in await roomy.jobs.next_for_dispatch(2)] == [b1.id, a2.id]


async def test_paused_guild_is_skipped_by_dispatch_but_stays_queued(roomy):
    """Jobs of a paused guild are not dispatched until the guild resumes."""
    paused_job = await make_job(roomy, user=A, guild=GUILD)
    other = await make_job(roomy, user=B, guild=GUILD + 1)
    await roomy.moderation.pause(GUILD, by=MOD)
    assert [j.id for j in await roomy.jobs.next_for_dispatch(5)] == [other.id]
    assert paused_job.id in [j.id for j in await roomy.jobs.queue()]
    await roomy.moderation.resume(GUILD, by=MOD)
    assert paused_job.id in [j.id for j in await roomy.jobs.next_for_dispatch(5)]


async def test_queue_lists_running_then_dispatched_then_pending(roomy):
    """queue() is the whole line in serving order, and position() counts the queued jobs ahead."""
    a1 = await make_job(roomy, user=A)
    a2 = await make_job(roomy, user=A)
    a3 = await make_job(roomy, user=A)
    b1 = await make_job(roomy, user=B)
    await roomy.jobs.start(a1.id)
    await roomy.jobs.mark_dispatched(a2.id)
    line = [j.id for j in await roomy.jobs.queue()]
    assert line == [a1.id, a2.id, b1.id, a3.id]
    assert [await roomy.jobs.position(j) for j in line] == [0, 0, 1, 2]
    assert await roomy.jobs.queue(guild_id=GUILD + 1) == []


async def test_position_is_the_place_in_queue_for_a_mixed_line(roomy, clock):
    """position() (counted in SQL) agrees with queue() for every job of a mixed line: several members with several
    jobs each, some running, some dispatched (two at the same instant), a paused guild, finished jobs left out;
    waiting() lists the queued ones in that order."""
    D = 104
    made = {u: [(await make_job(roomy, user=u, guild=GUILD + (u == D))).id for _ in range(n)]
            for u, n in ((A, 5), (B, 3), (C, 2), (D, 3))}
    await roomy.moderation.pause(GUILD + 1, by=MOD)
    await roomy.jobs.start(made[A][0], worker="w1")
    await roomy.jobs.start(made[C][0], worker="w1")
    await roomy.jobs.mark_dispatched(made[D][0])  # dispatched first although made last
    clock.advance(seconds=1)
    for job_id in (made[B][0], made[A][1]):  # one dispatch instant: the id decides
        await roomy.jobs.mark_dispatched(job_id)
    await roomy.jobs.cancel(made[B][1], by=B)
    done = await finished_job(roomy, user=C)
    line = await roomy.jobs.queue()
    running = sum(1 for j in line if j.status is JobStatus.RUNNING)
    expected = [0 if j.status is JobStatus.RUNNING else i - running for i, j in enumerate(line)]
    assert [await roomy.jobs.position(j.id) for j in line] == expected
    assert expected == [0, 0, *range(len(line) - 2)]
    assert await roomy.jobs.position(made[B][1]) is None and await roomy.jobs.position(done.id) is None
    assert await roomy.jobs.position(10**9) is None
    waiting = [j.id for j in line if j.status is JobStatus.QUEUED]
    assert await roomy.jobs.waiting() == waiting and await roomy.jobs.waiting(4) == waiting[:4]
    assert await roomy.jobs.waiting(2) == waiting[:2]


# --- queries -----------------------------------------------------------------------------------------------------
async def test_history_lists_a_members_jobs_newest_first(roomy):
    """history() returns only that member's jobs in that guild, newest first, with their images."""
    first = await finished_job(roomy, user=A)
    await make_job(roomy, user=B)
    second = await make_job(roomy, user=A)
    history = await roomy.jobs.history(GUILD, A, limit=10)
    assert [j.id for j in history] == [second.id, first.id]
    assert len(history[1].images) == 2
    assert [j.id for j in await roomy.jobs.history(GUILD, A, limit=10, before_id=second.id)] == [first.id]


async def test_unfinished_lists_what_recovery_must_reconcile(roomy):
    """Queued, running and succeeded-but-unposted jobs are unfinished; failed, cancelled and posted are not."""
    queued = await make_job(roomy)
    running = await make_job(roomy)
    await roomy.jobs.start(running.id)
    unposted = await finished_job(roomy)
    posted = await finished_job(roomy)
    await roomy.jobs.mark_posted(posted.id, CHANNEL, 9)
    failed = await make_job(roomy)
    await roomy.jobs.fail(failed.id, "x")
    cancelled = await make_job(roomy)
    await roomy.jobs.cancel(cancelled.id, by=A)
    assert [j.id for j in await roomy.jobs.unfinished()] == [queued.id, running.id, unposted.id]


async def test_succeed_accepts_named_images_with_nsfw_flag(services):
    """NewImage values carry the safety-checker flag through to the stored image."""
    job = await make_job(services)
    await services.jobs.start(job.id)
    done = await services.jobs.succeed(job.id, [NewImage(0, job.seed, "images/0/x.png", "ab" * 32, nsfw=True)])
    assert done.images[0].nsfw is True


async def test_progress_message_is_remembered(services):
    """The progress message ids are stored on the job."""
    job = await make_job(services)
    await services.jobs.set_progress_message(job.id, CHANNEL, 77)
    got = await services.jobs.get(job.id)
    assert (got.progress_channel_id, got.progress_message_id) == (CHANNEL, 77)


async def test_every_state_and_action_follows_the_transition_table(roomy):
    """For each state a job can be in and each action, the action succeeds exactly when the table allows it."""
    paths = {
        JobStatus.QUEUED: [],
        JobStatus.RUNNING: ["start"],
        JobStatus.SUCCEEDED: ["start", "succeed"],
        JobStatus.FAILED: ["fail"],
        JobStatus.CANCELLED: ["cancel"],
        JobStatus.POSTED: ["start", "succeed", "post"],
    }
    targets = {
        "start": JobStatus.RUNNING,
        "succeed": JobStatus.SUCCEEDED,
        "fail": JobStatus.FAILED,
        "cancel": JobStatus.CANCELLED,
        "requeue": JobStatus.QUEUED,
        "post": JobStatus.POSTED,
    }

    def act(job_id, name):
        return {
            "start": lambda: roomy.jobs.start(job_id),
            "succeed": lambda: roomy.jobs.succeed(job_id, []),
            "fail": lambda: roomy.jobs.fail(job_id, "x"),
            "cancel": lambda: roomy.jobs.cancel(job_id, by=A),
            "requeue": lambda: roomy.jobs.requeue(job_id),
            "post": lambda: roomy.jobs.mark_posted(job_id, 1, 2),
        }[name]()

    for state, path in paths.items():
        for action, target in targets.items():
            job = await make_job(roomy)
            for step in path:
                await act(job.id, step)
            allowed = state in TRANSITIONS[target]
            if allowed:
                await act(job.id, action)
                assert (await roomy.jobs.get(job.id)).status is target, (state, action)
            elif action == "post" and state is JobStatus.POSTED:
                assert await act(job.id, action) is False
            else:
                with pytest.raises(IllegalTransition):
                    await act(job.id, action)
                assert (await roomy.jobs.get(job.id)).status is state, (state, action)


async def test_cooldown_refuses_a_second_job_too_soon_and_charges_nothing(services, clock):
    """With a cooldown, a member's next job within it is refused with the moment to retry; after it, it runs.
    Other members and other guilds are not held."""
    await make_job(services, cooldown=5)
    clock.advance(seconds=2)
    with pytest.raises(OnCooldown) as refused:
        await make_job(services, cooldown=5)
    assert refused.value.retry_at == clock.now + timedelta(seconds=3)
    assert "<t:" in refused.value.user_message and ":R>" in refused.value.user_message
    assert (await services.quota.status(GUILD, A, [])).used == 100
    await make_job(services, user=B, cooldown=5)
    await make_job(services, guild=GUILD + 1, cooldown=5)
    clock.advance(seconds=3)
    await make_job(services, cooldown=5)
    assert (await services.quota.status(GUILD, A, [])).used == 200


async def test_job_ids_beyond_64_bits_are_simply_not_found(services):
    assert await services.jobs.find(2**64) is None and await services.jobs.find(-1) is None
