"""/mod commands: gated twice, and audited."""

from __future__ import annotations

import discord


async def actions(world) -> list[str]:
    return [e.action for e in await world.services.audit.recent(world.guild.id)]


async def test_member_without_manage_server_is_refused_and_audited(world):
    """A member whom the server's admins let see /mod is still refused by the bot, and the attempt is audited."""
    synced = await world.bot.tree.fetch_commands()
    mod = next(c for c in synced if c.name == "mod")
    world.guild.set_command_permissions(mod.id, {world.alice: True})
    result = await world.alice.slash(world.art, "mod pause")
    assert result.ephemeral and "moderators" in result.response.content.lower()
    assert not await world.services.moderation.is_paused(world.guild.id)
    assert "mod.denied" in await actions(world)


async def test_mod_commands_require_manage_guild_by_default(world):
    """The /mod group is declared with default member permissions Manage Server."""
    group = world.bot.tree.get_command("mod")
    assert group.default_permissions == discord.Permissions(manage_guild=True)


async def test_quota_grant_gives_credits_back(world):
    """/mod quota grant lowers the member's usage (a grid of 4 credits, 3 granted: 1 left used) and is audited."""
    await world.alice.slash(world.art, "imagine", prompt="x")
    await world.mod.slash(world.art, "mod quota grant", member=world.alice, credits=3)
    assert (await world.services.quota.status(world.guild.id, world.alice.id, [])).used == 100
    assert any(a.startswith("quota.") for a in await actions(world))


async def test_quota_set_and_reset(world):
    """/mod quota set changes the daily limit; /mod quota reset clears usage."""
    await world.alice.slash(world.art, "imagine", prompt="x")
    await world.mod.slash(world.art, "mod quota set", member=world.alice, credits_per_day=10)
    await world.mod.slash(world.art, "mod quota reset", member=world.alice)
    status = await world.services.quota.status(world.guild.id, world.alice.id, [])
    assert (status.limit, status.used) == (1000, 0)  # 10 credits in units


async def test_ban_and_unban(world):
    """/mod ban stops /imagine for the member; /mod unban lets them back."""
    await world.mod.slash(world.art, "mod ban", member=world.alice, reason="spam")
    refused = await world.alice.slash(world.art, "imagine", prompt="x")
    await world.mod.slash(world.art, "mod unban", member=world.alice)
    allowed = await world.alice.slash(world.art, "imagine", prompt="x")
    assert refused.ephemeral and "banned" in refused.response.content
    assert not allowed.ephemeral


async def test_blocked_terms_add_list_remove(world):
    """Terms can be added, listed and removed; a blocked prompt is refused meanwhile."""
    await world.mod.slash(world.art, "mod terms add", term="Gore")
    listed = await world.mod.slash(world.art, "mod terms list")
    refused = await world.alice.slash(world.art, "imagine", prompt="g.o.r.e")
    await world.mod.slash(world.art, "mod terms remove", term="gore")
    allowed = await world.alice.slash(world.art, "imagine", prompt="gore")
    assert "Gore" in listed.response.embeds[0].description
    assert refused.ephemeral and not allowed.ephemeral


async def test_channels_add_and_remove(world):
    """/mod channels add allows /imagine in another channel; remove takes it away."""
    await world.mod.slash(world.art, "mod channels add", channel=world.other)
    allowed = await world.alice.slash(world.other, "imagine", prompt="x")
    await world.mod.slash(world.art, "mod channels remove", channel=world.other)
    refused = await world.alice.slash(world.other, "imagine", prompt="x")
    assert not allowed.ephemeral and refused.ephemeral


async def test_nsfw_policy_is_stored(world):
    """/mod nsfw sets the guild's policy."""
    await world.mod.slash(world.art, "mod nsfw", policy="allow")
    assert (await world.services.moderation.guild_settings(world.guild.id)).nsfw_policy == "allow"


async def test_queue_list_and_cancel(world):
    """/mod queue list shows a waiting job; /mod queue cancel cancels it with a refund and an audit entry."""
    await world.alice.slash(world.art, "imagine", prompt="waiting job")
    job = await world.latest_job()
    listed = await world.mod.slash(world.art, "mod queue list")
    await world.mod.slash(world.art, "mod queue cancel", job=job.id)
    assert f"#{job.id}" in listed.response.embeds[0].description
    assert (await world.services.jobs.get(job.id)).status == "cancelled"
    assert (await world.services.quota.status(world.guild.id, world.alice.id, [])).used == 0
    assert "job.cancel" in await actions(world)
    assert world.dispatcher.cancelled == [job.id]


async def test_queue_list_shows_a_page_and_counts_the_rest(world):
    """A line longer than a page: the first QUEUE_PAGE jobs in the order they are served, then a count of the rest."""
    from bot.exts.mod.cog import QUEUE_PAGE

    ids = [(await world.services.jobs.create(world.guild.id, world.art.id, 9000 + i, [], prompt=f"job {i}",
                                               num_images=1)).id for i in range(QUEUE_PAGE + 3)]
    listed = await world.mod.slash(world.art, "mod queue list")
    text = listed.response.embeds[0].description
    assert f"#{ids[0]}**" in text and f"#{ids[QUEUE_PAGE - 1]}**" in text and f"#{ids[QUEUE_PAGE]}**" not in text
    assert text.rstrip().endswith("… and 3 more")


async def test_pause_resume_and_stats(world):
    """/mod pause and resume flip the queue; /mod stats counts jobs."""
    await world.alice.slash(world.art, "imagine", prompt="x")
    await world.mod.slash(world.art, "mod pause")
    paused = await world.services.moderation.is_paused(world.guild.id)
    await world.mod.slash(world.art, "mod resume")
    stats = await world.mod.slash(world.art, "mod stats")
    assert paused and not await world.services.moderation.is_paused(world.guild.id)
    assert "queued" in stats.response.embeds[0].description


async def test_channels_list_shows_the_art_channels(world):
    """/mod channels list names every art channel."""
    result = await world.mod.slash(world.art, "mod channels list")
    assert f"<#{world.art.id}>" in result.response.embeds[0].description


async def test_every_moderator_action_is_audited(world):
    """Each changing /mod command leaves its entry in the audit log, with the moderator as actor."""
    await world.alice.slash(world.art, "imagine", prompt="x")
    job = await world.latest_job()
    commands = [
        ("mod quota set", {"member": world.alice, "credits_per_day": 9}, "quota.set_limit"),
        ("mod quota grant", {"member": world.alice, "credits": 2}, "quota.grant"),
        ("mod quota reset", {"member": world.alice}, "quota.reset"),
        ("mod ban", {"member": world.bob}, "ban.add"),
        ("mod unban", {"member": world.bob}, "ban.remove"),
        ("mod terms add", {"term": "gore"}, "blocked_term.add"),
        ("mod terms remove", {"term": "gore"}, "blocked_term.remove"),
        ("mod channels add", {"channel": world.other}, "art_channel.add"),
        ("mod channels remove", {"channel": world.other}, "art_channel.remove"),
        ("mod nsfw", {"policy": "allow"}, "guild.nsfw_policy"),
        ("mod pause", {}, "queue.pause"),
        ("mod resume", {}, "queue.resume"),
        ("mod queue cancel", {"job": job.id}, "job.cancel"),
    ]
    for name, options, _ in commands:
        await world.mod.slash(world.art, name, **options)
    entries = await world.services.audit.recent(world.guild.id, limit=100)
    logged = {e.action for e in entries if e.actor_id == world.mod.id}
    assert {action for _, _, action in commands} <= logged


async def test_log_shows_recent_actions(world):
    """/mod log lists the latest audited actions with their moderator."""
    await world.mod.slash(world.art, "mod pause")
    result = await world.mod.slash(world.art, "mod log")
    text = result.response.embeds[0].description
    assert "queue.pause" in text and f"<@{world.mod.id}>" in text


async def test_configured_moderator_role_is_accepted(world):
    """A member with the MOD_ROLE_ID role (but no Manage Server) may use /mod once the admins show it to them."""
    helpers = world.guild.create_role("helpers")
    carol = world.guild.add_member(world.env.create_user("carol"), roles=[helpers])
    world.settings.mod_role_id = helpers.id
    synced = await world.bot.tree.fetch_commands()
    world.guild.set_command_permissions(next(c for c in synced if c.name == "mod").id, {helpers: True})
    await carol.slash(world.art, "mod pause")
    assert await world.services.moderation.is_paused(world.guild.id)


async def test_terms_remove_autocompletes_blocked_terms(world):
    """Typing in /mod terms remove offers the blocked terms that match."""
    await world.services.moderation.add_blocked_term(world.guild.id, "Gore", world.mod.id)
    await world.services.moderation.add_blocked_term(world.guild.id, "spam", world.mod.id)
    choices = await world.mod.autocomplete(world.art, "mod terms remove", "term", "go")
    assert [c["value"] for c in choices] == ["Gore"]


async def test_resume_asks_the_queue_to_dispatch_now(world):
    """/mod resume of a paused queue kicks the dispatcher once; resuming a running queue does not."""
    await world.mod.slash(world.art, "mod pause")
    await world.mod.slash(world.art, "mod resume")
    assert world.dispatcher.kicks == 1
    await world.mod.slash(world.art, "mod resume")
    assert world.dispatcher.kicks == 1
