"""Credits through the bot (Simcord): /imagine charges a job's work in credits and says so on its queued message, a
member whose fast credits cannot pay is queued in the relax lane (served after fast jobs, and served), /quota shows
both budgets and what a default job costs on each model, and /mod sets both budgets in credits."""

from __future__ import annotations


async def _jobs_of(world, user_id):
    return [j for j in await world.services.jobs.queue() if j.user_id == user_id]


async def test_a_job_is_charged_its_work_and_the_queued_message_says_so(world):
    """A default grid is 4 credits; one image at twice the card's steps is 2 (the stand-in's card: 64×64, 8 steps)."""
    card = world.dispatcher.cards[0]
    grid = await world.alice.slash(world.art, "imagine", prompt="a red circle")
    assert "Cost: 4 credit(s)." in grid.response.embeds[0].description
    await world.alice.slash(world.art, "imagine", prompt="a blue circle", count=1, steps=2 * card.default_steps)
    jobs = await _jobs_of(world, world.alice.id)
    assert [(j.num_images, j.cost, j.lane) for j in jobs] == [(4, 400, 0), (1, 200, 0)]
    assert (await world.services.quota.status(world.guild.id, world.alice.id, [])).used == 600


async def test_over_the_fast_budget_a_job_waits_in_the_relax_lane_after_fast_jobs_and_is_served(world):
    quota = world.services.quota
    await quota.set_limit(world.guild.id, world.alice.id, world.mod.id, images_per_day=400)  # 4 credits
    await world.alice.slash(world.art, "imagine", prompt="a red circle")
    relaxed = await world.alice.slash(world.art, "imagine", prompt="a green circle")
    text = relaxed.response.embeds[0].description
    assert "Relax lane: runs when no fast job waits" in text and "Cost: 4 credit(s)." in text
    await world.bob.slash(world.art, "imagine", prompt="a blue square")
    alice_fast, alice_relax = await _jobs_of(world, world.alice.id)
    [bob_fast] = await _jobs_of(world, world.bob.id)
    assert (alice_fast.lane, alice_relax.lane, bob_fast.lane) == (0, 1, 0)
    # Bob's fast job, made after Alice's relax job, is served before it.
    line = await world.services.jobs.next_for_dispatch(3)
    assert [j.id for j in line] == [alice_fast.id, bob_fast.id, alice_relax.id]
    status = await quota.status(world.guild.id, world.alice.id, [])
    assert (status.used, status.relax_used) == (400, 400)
    # And it is served: posted like any job, its credits kept.
    for job in line:
        await world.services.jobs.mark_dispatched(job.id)
    posted = await world.finish(alice_relax.id)
    assert posted is not None
    done = await world.services.jobs.get(alice_relax.id)
    assert (done.status.value, done.charge_state.value, done.lane) == ("posted", "committed", 1)


async def test_with_the_relax_lane_off_a_job_over_budget_is_refused_and_nothing_charged(world):
    quota = world.services.quota
    await quota.set_limit(world.guild.id, world.alice.id, world.mod.id, images_per_day=600, relax_per_day=0)
    await world.alice.slash(world.art, "imagine", prompt="a red circle")
    refused = await world.alice.slash(world.art, "imagine", prompt="a blue circle")
    assert refused.ephemeral and "This job costs 4 credit(s) but you have 2 of your 6 daily credits left." in (
        refused.response.content)
    status = await quota.status(world.guild.id, world.alice.id, [])
    assert (status.used, status.relax_used, status.active) == (400, 0, 1)
    assert len(world.dispatcher.published) == 1


async def test_quota_shows_fast_and_relax_credits_and_the_cost_of_a_default_job_per_model(world):
    await world.alice.slash(world.art, "imagine", prompt="a red circle", count=1)
    result = await world.alice.slash(world.art, "quota")
    embed = result.response.embeds[0]
    assert result.ephemeral
    assert "**39** of **40** fast credits left today" in embed.description
    assert "**160** of **160** relax credits left" in embed.description and "<t:" in embed.description
    costs = {f.name: f.value for f in embed.fields}["A default job (4 images) costs"]
    for card in world.dispatcher.cards:
        assert f"`{card.name}`: 4 credits" in costs


async def test_mod_sets_both_budgets_in_credits_for_members_and_roles(world):
    done = await world.mod.slash(world.art, "mod quota set", member=world.alice, credits_per_day=12.5,
                                 relax_credits_per_day=0)
    assert done.ephemeral and "12.5 fast credits per day, 0 relax credits per day" in done.response.content
    limits = await world.services.quota.effective_limits(world.guild.id, world.alice.id, [])
    assert (limits.images_per_day, limits.relax_per_day) == (1250, 0)
    granted = await world.mod.slash(world.art, "mod quota grant", member=world.alice, credits=2.25)
    assert "Granted 2.25 extra credit(s)" in granted.response.content
    assert (await world.services.quota.status(world.guild.id, world.alice.id, [])).used == -225
    artists = world.guild.create_role("artists")
    role = await world.mod.slash(world.art, "mod quota role-set", role=artists, credits_per_day=60,
                                 relax_credits_per_day=300)
    assert "60 fast credits per day, 300 relax credits per day" in role.response.content
    limits = await world.services.quota.effective_limits(world.guild.id, world.bob.id, [artists.id])
    assert (limits.images_per_day, limits.relax_per_day) == (6000, 30000)
    refused = await world.mod.slash(world.art, "mod quota role-set", role=artists, relax_credits_per_day=5000)
    assert refused.ephemeral and "MAX_RELAX_CREDITS_PER_DAY_CAP" in refused.response.content
