"""Model policy service: a guild's default model and hidden models, compared as queue tokens, each change audited."""

from __future__ import annotations

import pytest

from bot.errors import InvalidSetting
from tests.bot.conftest import GUILD, MOD


async def audit_actions(services) -> list[tuple[str, str | None, dict]]:
    return [(e.action, e.target, e.details) for e in reversed(await services.audit.recent(GUILD))]


async def test_a_guild_that_set_nothing_has_no_default_and_nothing_hidden(services):
    policy = await services.model_policy.policy(GUILD)
    assert (policy.default_model, policy.hidden) == (None, ())
    assert not policy.is_hidden("sdxl") and not policy.is_default("sdxl")


async def test_default_is_set_changed_and_cleared_with_the_previous_one_returned(services, clock):
    assert await services.model_policy.set_default(GUILD, "sdxl", MOD) is None
    assert await services.model_policy.set_default(GUILD, "tiny", MOD) == "sdxl"
    policy = await services.model_policy.policy(GUILD)
    assert policy.default_model == "tiny" and policy.is_default("TINY")
    assert await services.model_policy.set_default(GUILD, None, MOD) == "tiny"
    assert await services.model_policy.set_default(GUILD, None, MOD) is None  # nothing to clear: not audited
    assert (await services.model_policy.policy(GUILD)).default_model is None
    assert await audit_actions(services) == [
        ("model.default", "model:sdxl", {"model": "sdxl", "previous": None}),
        ("model.default", "model:tiny", {"model": "tiny", "previous": "sdxl"}),
        ("model.default", "model:-", {"model": None, "previous": "tiny"}),
    ]
    # The other guild settings are untouched by it.
    assert (await services.moderation.guild_settings(GUILD)).nsfw_policy == "block"


async def test_hide_and_show_compare_names_as_queue_tokens(services, clock):
    assert await services.model_policy.hide(GUILD, "SDXL Base", MOD)
    assert not await services.model_policy.hide(GUILD, "sdxl-base", MOD)  # the same model
    policy = await services.model_policy.policy(GUILD)
    assert [h.name for h in policy.hidden] == ["SDXL Base"] and policy.hidden[0].hidden_by == MOD
    assert policy.hidden[0].hidden_at == clock.now and policy.is_hidden("sdxl  BASE")
    assert await services.model_policy.show(GUILD, "sdxl base", MOD)
    assert not await services.model_policy.show(GUILD, "sdxl base", MOD)
    assert (await services.model_policy.policy(GUILD)).hidden == ()
    assert [a for a, _, _ in await audit_actions(services)] == ["model.hide", "model.show"]
    assert (await services.model_policy.policy(GUILD + 1)).hidden == ()


async def test_the_default_cannot_be_hidden_nor_a_hidden_model_become_default(services):
    await services.model_policy.set_default(GUILD, "tiny", MOD)
    with pytest.raises(InvalidSetting, match="default model"):
        await services.model_policy.hide(GUILD, "Tiny", MOD)
    await services.model_policy.hide(GUILD, "sdxl", MOD)
    with pytest.raises(InvalidSetting, match="it is hidden in this server"):
        await services.model_policy.set_default(GUILD, "SDXL", MOD)
    policy = await services.model_policy.policy(GUILD)
    assert policy.default_model == "tiny" and [h.name for h in policy.hidden] == ["sdxl"]


@pytest.mark.parametrize("name", ["", "   ", "-lead", "a" * 81, "bad/name", "emoji 🎨", "new\nline"])
async def test_a_name_that_no_card_can_have_is_refused_naming_the_rule(services, name):
    for call in (services.model_policy.set_default(GUILD, name, MOD), services.model_policy.hide(GUILD, name, MOD),
                 services.model_policy.show(GUILD, name, MOD)):
        with pytest.raises(InvalidSetting, match="a model name has 1-80 letters"):
            await call
    assert await services.audit.recent(GUILD) == []
