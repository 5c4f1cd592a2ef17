"""Operator limits: the guild allow-list (ALLOWED_GUILD_IDS) and the caps moderators can not exceed
(MAX_IMAGES_PER_DAY_CAP, MAX_CONCURRENT_CAP, MAX_QUEUED_PER_GUILD)."""

from __future__ import annotations

import logging

from bot.services.quota import Caps


async def used(world, member) -> int:
    return (await world.services.quota.status(world.guild.id, member.id, [])).used


async def test_the_bot_leaves_a_guild_that_is_not_allowed(world, caplog):
    """Added to a guild that is not in ALLOWED_GUILD_IDS, the bot leaves it at once and logs why; a listed one
    stays."""
    world.settings.allowed_guild_ids = [world.guild.id]
    with caplog.at_level(logging.WARNING, logger="bot.app"):
        other = world.env.create_guild("Elsewhere")
        await world.env.settle()
    assert world.bot.get_guild(other.id) is None and world.bot.get_guild(world.guild.id) is not None
    assert any(str(other.id) in r.getMessage() and "ALLOWED_GUILD_IDS" in r.getMessage() for r in caplog.records)


async def test_a_command_from_a_guild_not_allowed_is_refused_and_the_bot_leaves_it_at_start(world):
    """With the guild taken off the list, its commands and buttons are refused (nothing charged); at the next start
    the bot leaves it."""
    await world.alice.slash(world.art, "imagine", prompt="a red circle")
    job = await world.latest_job()
    message = await world.finish(job.id)
    world.settings.allowed_guild_ids = [world.guild.id + 1]
    refused = await world.alice.slash(world.art, "imagine", prompt="a red circle")
    assert refused.ephemeral and "not available in this server" in refused.response.content
    from bot.ui.buttons import job_custom_id

    click = await world.alice.click(message, custom_id=job_custom_id(job.id, "r"))
    assert click.ephemeral and "not available in this server" in click.response.content
    assert await used(world, world.alice) == 400 and world.dispatcher.published == [job.id]  # 4 credits
    await world.restart()
    assert world.bot.get_guild(world.guild.id) is None


async def test_an_empty_allow_list_allows_every_guild(world):
    """ALLOWED_GUILD_IDS empty (the default): the bot stays in every guild it is added to."""
    other = world.env.create_guild("Elsewhere")
    await world.env.settle()
    assert world.bot.get_guild(other.id) is not None


async def test_quota_set_above_a_cap_is_refused_naming_it(world):
    """/mod quota set refuses values above the operator's caps, naming the setting, and changes nothing."""
    world.services.quota.caps = Caps(images_per_day=10000, max_concurrent=3)  # 100 credits
    credits = await world.mod.slash(world.art, "mod quota set", member=world.alice, credits_per_day=100.5)
    jobs = await world.mod.slash(world.art, "mod quota set", member=world.alice, max_concurrent=4)
    assert credits.ephemeral and "MAX_CREDITS_PER_DAY_CAP" in credits.response.content
    assert "at most 100 credits" in credits.response.content
    assert jobs.ephemeral and "MAX_CONCURRENT_CAP" in jobs.response.content
    limits = await world.services.quota.effective_limits(world.guild.id, world.alice.id, [])
    assert (limits.images_per_day, limits.max_concurrent) == (4000, 2)
    ok = await world.mod.slash(world.art, "mod quota set", member=world.alice, credits_per_day=100, max_concurrent=3)
    assert "100 fast credits per day" in ok.response.content


async def test_effective_limits_are_clamped_to_the_caps(world):
    """Limits set before a cap was lowered (guild defaults, roles, a member's override) give no more than the cap."""
    await world.services.moderation.set_guild_defaults(world.guild.id, world.mod.id, images_per_day=50000, max_concurrent=6)
    await world.services.quota.set_limit(world.guild.id, world.bob.id, world.mod.id, images_per_day=90000)
    world.services.quota.caps = Caps(images_per_day=1000, max_concurrent=1)  # 10 credits
    alice = await world.services.quota.effective_limits(world.guild.id, world.alice.id, [])
    bob = await world.services.quota.effective_limits(world.guild.id, world.bob.id, [])
    assert (alice.images_per_day, alice.max_concurrent) == (1000, 1) and bob.images_per_day == 1000
    await world.alice.slash(world.art, "imagine", prompt="a red circle")
    second = await world.alice.slash(world.art, "imagine", prompt="a red circle", count=1)
    assert second.ephemeral and await used(world, world.alice) == 400
    shown = await world.alice.slash(world.art, "quota")
    assert "of **10**" in shown.response.embeds[0].description


async def test_the_guild_queue_cap_refuses_the_next_job(world):
    """With MAX_QUEUED_PER_GUILD jobs waiting or running in the guild, the next one is refused and nothing is
    charged; once one finishes there is room again."""
    world.settings.max_queued_per_guild = 2
    await world.alice.slash(world.art, "imagine", prompt="a red circle")
    await world.mod.slash(world.art, "imagine", prompt="a blue square")
    refused = await world.bob.slash(world.art, "imagine", prompt="a green star")
    assert refused.ephemeral and "2 jobs waiting or running" in refused.response.content
    assert await used(world, world.bob) == 0 and len(world.dispatcher.published) == 2
    await world.finish((await world.latest_job()).id)
    await world.bob.slash(world.art, "imagine", prompt="a green star")
    assert await used(world, world.bob) == 400
