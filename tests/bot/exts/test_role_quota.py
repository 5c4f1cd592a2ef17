"""/mod quota role-set|role-clear|role-list: the per-role quota overrides reached from a command."""

from __future__ import annotations

import discord


async def test_role_limits_set_list_and_clear_reach_the_members_quota(world):
    artists = world.guild.create_role("artists")
    done = await world.mod.slash(world.art, "mod quota role-set", role=artists, credits_per_day=60, max_concurrent=3)
    assert done.ephemeral and "60 fast credits per day, default relax credits per day, 3 jobs at once" in (
        done.response.content)
    status = await world.services.quota.status(world.guild.id, world.alice.id, [artists.id])
    assert (status.limit, status.max_concurrent) == (6000, 3)  # units
    # Another limit later keeps the first ones.
    await world.mod.slash(world.art, "mod quota role-set", role=artists, max_steps=30)
    (limits,) = await world.services.moderation.role_limits(world.guild.id)
    assert (limits.images_per_day, limits.max_concurrent, limits.max_steps) == (6000, 3, 30)
    listed = await world.mod.slash(world.art, "mod quota role-list")
    assert f"<@&{artists.id}>: 60 fast credits per day" in listed.response.embeds[0].description
    cleared = await world.mod.slash(world.art, "mod quota role-clear", role=artists)
    assert "no longer" in cleared.response.content
    assert await world.services.moderation.role_limits(world.guild.id) == []
    status = await world.services.quota.status(world.guild.id, world.alice.id, [artists.id])
    assert status.limit == world.settings.default_credits_per_day * 100 != 6000
    actions = [e.action for e in await world.services.audit.recent(world.guild.id)]
    assert actions.count("role_quota.set") == 2 and "role_quota.clear" in actions


async def test_a_role_limit_above_the_operators_cap_is_refused_naming_it(world):
    artists = world.guild.create_role("artists")
    cap = world.services.quota.caps.images_per_day / 100  # credits
    refused = await world.mod.slash(world.art, "mod quota role-set", role=artists, credits_per_day=cap + 1)
    assert refused.ephemeral and "MAX_CREDITS_PER_DAY_CAP" in refused.response.content
    assert await world.services.moderation.role_limits(world.guild.id) == []


async def test_role_set_without_a_limit_is_refused(world):
    artists = world.guild.create_role("artists")
    refused = await world.mod.slash(world.art, "mod quota role-set", role=artists)
    assert refused.ephemeral and "at least one limit" in refused.response.content


async def test_a_member_can_not_set_role_quotas(world):
    synced = await world.bot.tree.fetch_commands()
    mod = next(c for c in synced if c.name == "mod")
    world.guild.set_command_permissions(mod.id, {world.alice: True})
    everyone = world.guild.create_role("everyone-ish", permissions=discord.Permissions.none())
    refused = await world.alice.slash(world.art, "mod quota role-set", role=everyone, credits_per_day=999)
    assert refused.ephemeral and "moderators" in refused.response.content.lower()
    assert await world.services.moderation.role_limits(world.guild.id) == []
