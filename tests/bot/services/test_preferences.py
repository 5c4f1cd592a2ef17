"""The precedence of /imagine's values (bot.services.preferences.resolve) and the stored defaults."""

from __future__ import annotations

import pytest

from bot.errors import InvalidSetting
from bot.services.preferences import (
    DEFAULT_COUNT,
    Defaults,
    Levels,
    PreferenceService,
    Source,
    StyleDefaults,
    resolve,
)
from generation.protocol.cards import ModelCard

CARDS = {
    "alpha": ModelCard(name="alpha", architecture="sd1", default_steps=20, max_steps=40, default_guidance=7.0),
    "beta": ModelCard(name="beta", architecture="sd1", default_steps=10, max_steps=12, default_guidance=3.0),
    "gamma": ModelCard(name="gamma", architecture="sd1", default_steps=30, default_guidance=5.0),
}
STYLES = {"ink": StyleDefaults("ink", model="gamma", guidance=4.5), "plain": StyleDefaults("plain")}


def levels(option=None, member=None, channel=None, server="alpha", served=("alpha", "beta", "gamma")):
    return Levels(
        option=option or {}, member=member or Defaults(), channel=channel or Defaults(), server_model=server,
        model_problem=lambda name: None if name in served else "it is not served now",
        style_of=STYLES.get,
        card_of=lambda name: CARDS.get(name or server or "alpha"),
    )


# One row per level: (option, member, channel, server) -> the source that wins and its value.
LEVEL_TABLE = [
    ({"steps": 5}, Defaults(steps=6), Defaults(steps=7), Source.OPTION, 5),
    ({}, Defaults(steps=6), Defaults(steps=7), Source.MEMBER, 6),
    ({}, Defaults(), Defaults(steps=7), Source.CHANNEL, 7),
    ({}, Defaults(), Defaults(), Source.CARD, 20),
]


@pytest.mark.parametrize("option,member,channel,source,value", LEVEL_TABLE)
def test_each_level_wins_over_the_levels_below_it(option, member, channel, source, value):
    got = resolve(levels(option, member, channel))["steps"]
    assert (got.source, got.value, got.notes) == (source, value, ())


@pytest.mark.parametrize("option,member,channel,source,value", [
    ({"model": "beta"}, Defaults(model="gamma"), Defaults(model="alpha"), Source.OPTION, "beta"),
    ({}, Defaults(model="gamma"), Defaults(model="beta"), Source.MEMBER, "gamma"),
    ({}, Defaults(), Defaults(model="beta"), Source.CHANNEL, "beta"),
    ({}, Defaults(), Defaults(), Source.SERVER, "alpha"),
])
def test_the_model_ranks_option_member_channel_then_the_server_default(option, member, channel, source, value):
    got = resolve(levels(option, member, channel))
    assert (got["model"].source, got["model"].value) == (source, value)
    assert got.card is CARDS[value]


def test_without_a_server_default_the_model_is_chosen_automatically_and_the_card_fills_the_rest():
    got = resolve(levels(server=None))
    assert (got["model"].source, got["model"].value) == (Source.CARD, None)
    assert (got.value("steps"), got.value("guidance"), got.value("count"), got.value("aspect")) == (
        20, 7.0, DEFAULT_COUNT, None)
    assert got["style"].value is None


def test_the_card_of_the_resolved_model_gives_the_defaults():
    got = resolve(levels({}, Defaults(model="beta")))
    assert (got.value("steps"), got.value("guidance")) == (10, 3.0)


def test_a_style_brings_its_model_and_guidance_right_below_its_own_level():
    # From the option: above the member's default model.
    got = resolve(levels({"style": "ink"}, Defaults(model="beta", guidance=9.0)))
    assert (got.value("model"), got["model"].via_style, got["model"].source) == ("gamma", "ink", Source.OPTION)
    assert got.value("guidance") == 4.5 and "style `ink`" in got["guidance"].label
    # An explicit option still wins over the style's.
    assert resolve(levels({"style": "ink", "guidance": 2.0}))["guidance"].value == 2.0
    # A member's default style: its model comes before the channel's default model, after the member's own model.
    got = resolve(levels({}, Defaults(style="ink"), Defaults(model="beta")))
    assert (got.value("model"), got["model"].source) == ("gamma", Source.MEMBER)
    got = resolve(levels({}, Defaults(style="ink", model="alpha"), Defaults(model="beta")))
    assert got.value("model") == "alpha"


def test_a_default_model_no_longer_served_falls_back_with_a_note():
    got = resolve(levels({}, Defaults(model="gone"), Defaults(model="beta")))
    assert (got.value("model"), got["model"].source) == ("beta", Source.CHANNEL)
    assert got.notes == ["Your default model `gone` was not used: it is not served now."]
    # Nothing usable below: the server's default.
    got = resolve(levels({}, Defaults(model="gone")))
    assert (got.value("model"), got["model"].source) == ("alpha", Source.SERVER)


def test_a_removed_default_style_falls_back_with_a_note():
    got = resolve(levels({}, Defaults(style="deleted"), Defaults(style="plain")))
    assert (got.value("style"), got["style"].source) == ("plain", Source.CHANNEL)
    assert "Your default style `deleted` was not used: there is no such style any more." in got.notes


def test_default_steps_above_the_models_limit_fall_back_to_the_next_level():
    # beta takes at most 12 steps: the member's 30 is passed over for the channel's 8, then for the card's.
    got = resolve(levels({}, Defaults(model="beta", steps=30), Defaults(steps=8)))
    assert (got.value("steps"), got["steps"].source) == (8, Source.CHANNEL)
    assert "`beta` takes at most 12 steps" in got.notes[0]
    got = resolve(levels({}, Defaults(model="beta", steps=30)))
    assert (got.value("steps"), got["steps"].source) == (10, Source.CARD)
    # A typed option is not passed over: it is checked (and refused) as before.
    assert resolve(levels({"steps": 30, "model": "beta"})).value("steps") == 30
    # Above the member's own limit (their roles' max steps) it is passed over too.
    limited = levels({}, Defaults(steps=35))
    limited.steps_limit = 30
    got = resolve(limited)
    assert (got.value("steps"), got["steps"].source) == (20, Source.CARD)
    assert "your limit here is 30 steps" in got.notes[0]


async def test_member_defaults_are_set_reset_and_kept_per_guild(services):
    prefs = PreferenceService(services.sessions)
    await prefs.set_member(1, 10, steps=30, aspect="3:4", stealth=True)
    await prefs.set_member(1, 10, guidance=6.5)
    assert await prefs.member(1, 10) == Defaults(aspect="3:4", steps=30, guidance=6.5, stealth=True)
    assert await prefs.member(2, 10) == Defaults()
    assert (await prefs.reset_member(1, 10, "steps")).steps is None
    assert (await prefs.reset_member(1, 10, "mode")).stealth is False
    assert await prefs.reset_member(1, 10) == Defaults()
    with pytest.raises(InvalidSetting, match="1 to"):
        await prefs.set_member(1, 10, steps=0)
    with pytest.raises(InvalidSetting, match="count"):
        await prefs.set_member(1, 10, count=9)


async def test_channel_defaults_are_set_cleared_and_audited(services):
    prefs = PreferenceService(services.sessions)
    await prefs.set_channel(1, 5, 99, model="beta", count=2)
    assert await prefs.channels(1) == [(5, Defaults(model="beta", count=2))]
    assert await prefs.clear_channel(1, 5, 99, "count") is True
    assert await prefs.channel(1, 5) == Defaults(model="beta")
    assert await prefs.clear_channel(1, 5, 99, "count") is False
    assert await prefs.clear_channel(1, 5, 99, "model") is True  # the last one: the row goes
    assert await prefs.channels(1) == []
    actions = [e.action for e in await services.audit.recent(1)]
    assert actions.count("channel_defaults.set") == 1 and actions.count("channel_defaults.clear") == 2
