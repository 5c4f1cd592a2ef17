"""`{a, b}` permutations in /imagine: the count and total cost are shown before anything is queued, Confirm starts
one job per combination (each charged once and posted on its own), Cancel and a lapse start none, the cap refuses
without charging, and a refused job stops the rest while the ones before it stay queued."""

from __future__ import annotations

from bot.db.models import Job
from bot.services.costs import format_credits, job_units
from tests.bot.exts.conftest import SHAPES


async def jobs(world) -> list[Job]:
    return await world.services.jobs.queue()


async def used(world) -> int:
    return (await world.services.quota.status(world.guild.id, world.alice.id, [])).used


async def roomy(world) -> None:
    """Let alice run 8 jobs at once (the default is 2: the third of a batch would be refused, as any third job)."""
    await world.services.quota.set_limit(world.guild.id, world.alice.id, world.mod.id, max_concurrent=8)


async def ask(world, **options):
    result = await world.alice.slash(world.art, "imagine", **options)
    assert result.ephemeral, result.response.content
    return result


async def test_the_count_and_the_total_cost_are_shown_before_anything_is_queued(world):
    asked = await ask(world, prompt="a {red, blue} circle")
    text = asked.response.content
    assert "**2 jobs**" in text and "`a red circle`" in text and "`a blue circle`" in text
    labels = [c["label"] for row in asked.response.components for c in row.get("components", [])]
    assert labels == ["Confirm", "Cancel"]
    assert await jobs(world) == [] and await used(world) == 0


async def test_confirm_queues_one_job_per_combination_each_charged_once_and_posted(world):
    await roomy(world)
    asked = await ask(world, prompt="a {red, blue} {circle, square}", count=1)
    question = asked.response.content
    await world.alice.click(asked.response, label="Confirm")
    queued = await jobs(world)
    assert sorted(j.prompt for j in queued) == ["a blue circle", "a blue square", "a red circle", "a red square"]
    assert sorted(world.dispatcher.published) == sorted(j.id for j in queued)
    # Each has its own queued message in the channel, and is charged on its own.
    assert len({j.progress_message_id for j in queued}) == 4 and all(j.progress_message_id for j in queued)
    assert all(j.progress_channel_id == world.art.id for j in queued)
    assert await used(world) == sum(j.cost for j in queued)
    # The total shown is the sum of what was charged.
    assert f"**{format_credits(sum(j.cost for j in queued))} credits**" in question
    assert all(j.cost == job_units(j, SHAPES) for j in queued)
    assert "Queued 4 of 4 jobs." in asked.response.content
    message = await world.finish(queued[0].id)
    assert message is not None and message.channel.id == world.art.id


async def test_cancel_queues_nothing(world):
    asked = await ask(world, prompt="{a, b} circle")
    await world.alice.click(asked.response, label="Cancel")
    assert "nothing was queued" in asked.response.content
    assert await jobs(world) == [] and await used(world) == 0


async def test_an_unanswered_question_lapses_and_queues_nothing(world):
    asked = await ask(world, prompt="{a, b} circle")
    await world.env.advance_time(world.settings.permutation_confirm_seconds + 1)
    assert "lapsed" in asked.response.content
    assert await jobs(world) == []


async def test_more_combinations_than_the_cap_are_refused_and_nothing_is_charged(world):
    refused = await world.alice.slash(world.art, "imagine", prompt="{a,b,c} {d,e,f} circle")
    assert refused.ephemeral and "9 combinations" in refused.response.content
    assert f"at most {world.settings.permutation_max_jobs}" in refused.response.content
    assert await jobs(world) == [] and await used(world) == 0


async def test_the_negative_prompt_and_the_style_multiply_too(world):
    await world.mod.slash(world.art, "mod style add", name="ink", prompt="ink {prompt}")
    await world.mod.slash(world.art, "mod style add", name="oil", prompt="oil {prompt}")
    await roomy(world)
    asked = await ask(world, prompt="a circle", negative="{blur, noise}", style="{ink, oil}", count=1)
    assert "**4 jobs**" in asked.response.content
    await world.alice.click(asked.response, label="Confirm")
    got = sorted((j.prompt, j.negative_prompt, j.style) for j in await jobs(world))
    assert got == [("ink a circle", "blur", "ink"), ("ink a circle", "noise", "ink"),
                   ("oil a circle", "blur", "oil"), ("oil a circle", "noise", "oil")]


async def test_a_refused_job_says_which_and_stops_the_rest_the_ones_before_stay(world):
    await world.mod.slash(world.art, "mod terms add", term="gore")
    await roomy(world)
    asked = await ask(world, prompt="a {red, gore, blue} circle", count=1)
    result = await world.alice.click(asked.response, label="Confirm")
    assert [j.prompt for j in await jobs(world)] == ["a red circle"]
    refusal = " ".join(f.content for f in result.followups)
    assert "Job 2 of 3" in refusal and "blocked" in refusal.lower() and "1 job before it is queued" in refusal
    assert "the other 1 job was not started" in refusal
    assert await used(world) == (await jobs(world))[0].cost


async def test_escaped_braces_make_one_job_without_a_question(world):
    result = await world.alice.slash(world.art, "imagine", prompt=r"a \{red\} circle")
    assert not result.ephemeral
    assert (await world.latest_job()).prompt == "a {red} circle"


async def test_more_jobs_than_the_members_free_slots_are_refused_before_the_question(world):
    # The default allows 2 jobs at once; one is queued already, so 2 more can not all run.
    await world.alice.slash(world.art, "imagine", prompt="a circle")
    refused = await world.alice.slash(world.art, "imagine", prompt="a {red, blue} square")
    text = refused.response.content
    assert refused.ephemeral and "2 jobs" in text and "at most 1 now" in text and "Nothing was charged" in text
    assert not refused.response.components  # no Confirm button: nothing to confirm
    assert len(await jobs(world)) == 1
    # Room for both: the question comes.
    await roomy(world)
    asked = await ask(world, prompt="a {red, blue} square")
    assert "**2 jobs**" in asked.response.content


async def test_in_a_burst_the_command_is_acknowledged_first_and_the_question_stays_private(world):
    """While other interactions are being admitted /imagine is deferred before any of its reads (the member's and
    the channel's defaults, the costs); the question then comes as an ephemeral follow-up and the public
    "thinking…" message is removed."""
    from bot.exts.imagine import flow

    await roomy(world)
    with flow.admission(world.bot).entering():  # another interaction is being admitted
        result = await world.alice.slash(world.art, "imagine", prompt="a {red, blue} circle")
    assert result.response is None  # the public "thinking…" is gone
    (question,) = result.followups
    assert question.ephemeral and "**2 jobs**" in question.content
    await world.alice.click(question, label="Confirm")
    assert len(await jobs(world)) == 2


async def test_in_a_burst_a_single_job_is_acknowledged_before_any_read_and_then_shown(world, monkeypatch):
    from bot.exts.imagine import cog, flow

    order: list[str] = []
    real_defer, real_gather = flow.defer, cog.gather

    async def defer(interaction, **kwargs):
        order.append("defer")
        await real_defer(interaction, **kwargs)

    async def gather(interaction, option):
        order.append("defaults read")
        return await real_gather(interaction, option)

    monkeypatch.setattr(flow, "defer", defer)
    monkeypatch.setattr(cog, "gather", gather)
    with flow.admission(world.bot).entering():
        result = await world.alice.slash(world.art, "imagine", prompt="a red circle")
    assert order[:2] == ["defer", "defaults read"]  # (start_job's own admission may defer again: a no-op)
    assert not result.ephemeral
    assert result.response is not None and result.response.embeds  # the queued message replaced "thinking…"
    assert len(await jobs(world)) == 1
    # Not busy: no deferral, the queued message is the answer.
    order.clear()
    await world.alice.slash(world.art, "imagine", prompt="a blue circle")
    assert order == ["defaults read"]


async def test_in_a_burst_a_refusal_is_private_and_nothing_public_stays(world):
    from bot.exts.imagine import flow

    with flow.admission(world.bot).entering():
        result = await world.alice.slash(world.art, "imagine", prompt="a {red, blue, green} circle")
    assert result.response is None  # no public message left, "thinking…" or refusal
    (refusal,) = result.followups
    assert refusal.ephemeral and "3 jobs" in refusal.content and "Nothing was charged" in refusal.content
    assert await jobs(world) == [] and await used(world) == 0
