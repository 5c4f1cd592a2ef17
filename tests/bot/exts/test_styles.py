"""Styles: the server's (/mod style), a member's own (/style), /imagine style: (applied, checked, recorded), and the
style carried on by 🔄, V and ℹ️."""

from __future__ import annotations

import pytest

from bot.errors import InvalidSetting
from bot.services.styles import MAX_PERSONAL_STYLES, StyleService, check_name
from bot.ui.buttons import job_custom_id
from generation.engine.pngmeta import format_parameters, parse_parameters
from generation.protocol.contract import GenerationRequest
from generation.protocol.queue import request_digest


def styles(world) -> StyleService:
    return StyleService(world.services.sessions)


async def actions(world) -> list[str]:
    return [e.action for e in await world.services.audit.recent(world.guild.id)]


async def test_moderators_keep_the_server_styles_and_each_change_is_audited(world):
    added = await world.mod.slash(world.art, "mod style add", name="Ink", prompt="ink drawing of {prompt}, high contrast",
                                  negative="color", sampler="Euler a", guidance=5.5)
    assert "ink" in added.response.content and added.ephemeral
    await world.mod.slash(world.art, "mod style edit", name="ink", negative="blurry", clear="guidance")
    (style,) = await styles(world).server_styles(world.guild.id)
    assert (style.name, style.prompt, style.negative, style.sampler, style.guidance) == (
        "ink", "ink drawing of {prompt}, high contrast", "blurry", "euler_a", None)
    listed = await world.mod.slash(world.art, "mod style list")
    assert "ink drawing of" in listed.response.embeds[0].description
    await world.mod.slash(world.art, "mod style remove", name="ink")
    assert await styles(world).server_styles(world.guild.id) == []
    assert {"style.add", "style.edit", "style.remove"} <= set(await actions(world))


async def test_a_member_can_not_add_a_server_style(world):
    synced = await world.bot.tree.fetch_commands()
    mod = next(c for c in synced if c.name == "mod")
    world.guild.set_command_permissions(mod.id, {world.alice: True})
    refused = await world.alice.slash(world.art, "mod style add", name="ink", prompt="ink {prompt}")
    assert refused.ephemeral and "moderators" in refused.response.content.lower()
    assert await styles(world).server_styles(world.guild.id) == []
    assert "mod.denied" in await actions(world)


@pytest.mark.parametrize("name,prompt,message", [
    ("ink wash", "ink {prompt}", "letters, digits, '-' or '_'"),
    ("@everyone", "ink {prompt}", "letters, digits"),
    ("ínk", "ink {prompt}", "1-32"),
    ("ink", "ink drawing", "has to hold {prompt}"),
])
async def test_bad_style_names_and_templates_are_refused_naming_the_rule(world, name, prompt, message):
    result = await world.mod.slash(world.art, "mod style add", name=name, prompt=prompt)
    assert result.ephemeral and message in result.response.content
    assert await styles(world).server_styles(world.guild.id) == []


async def test_imagine_with_a_style_expands_the_prompt_and_records_the_style(world):
    await world.mod.slash(world.art, "mod style add", name="ink", prompt="ink drawing of {prompt}, high contrast",
                          negative="color", guidance=5.5, sampler="Euler a")
    result = await world.alice.slash(world.art, "imagine", prompt="a red circle", negative="blurry", style="INK")
    assert not result.ephemeral
    job = await world.latest_job()
    assert job.prompt == "ink drawing of a red circle, high contrast"
    assert job.negative_prompt == "color, blurry"
    assert (job.guidance, job.scheduler, job.style) == (5.5, "euler_a", "ink")
    # An option the member gives wins over the style's default.
    await world.alice.slash(world.art, "imagine", prompt="a square", style="ink", guidance=9.0, scheduler="ddim")
    assert ((await world.latest_job()).guidance, (await world.latest_job()).scheduler) == (9.0, "ddim")
    # Without a style nothing of it applies.
    await world.bob.slash(world.art, "imagine", prompt="a square")
    plain = max(await world.services.jobs.queue(), key=lambda j: j.id)
    assert (plain.prompt, plain.style, plain.scheduler) == ("a square", "", "dpmpp_2m")


async def test_blocked_terms_apply_to_the_expanded_prompt(world):
    await world.mod.slash(world.art, "mod style add", name="gory", prompt="{prompt}, gore everywhere")
    await world.mod.slash(world.art, "mod terms add", term="gore")
    refused = await world.alice.slash(world.art, "imagine", prompt="a red circle", style="gory")
    assert refused.ephemeral and "blocked" in refused.response.content.lower()
    assert await world.services.jobs.queue() == []


async def test_an_unknown_style_is_refused_and_nothing_is_charged(world):
    refused = await world.alice.slash(world.art, "imagine", prompt="a red circle", style="nope")
    assert refused.ephemeral and "no style named `nope`" in refused.response.content
    assert (await world.services.quota.status(world.guild.id, world.alice.id, [])).used == 0


async def test_personal_styles_are_saved_listed_used_and_removed(world):
    saved = await world.alice.slash(world.art, "style save", name="Mine", prompt="pastel {prompt}", negative="dark")
    assert saved.ephemeral and "my:mine" in saved.response.content
    listed = await world.alice.slash(world.art, "style list")
    assert "pastel" in listed.response.embeds[0].description
    # Only their owner sees and uses them.
    assert "pastel" not in (await world.bob.slash(world.art, "style list")).response.embeds[0].description
    refused = await world.bob.slash(world.art, "imagine", prompt="x", style="mine")
    assert refused.ephemeral and "no style named `mine`" in refused.response.content
    await world.alice.slash(world.art, "imagine", prompt="a circle", style="my:mine")
    job = await world.latest_job()
    assert (job.prompt, job.negative_prompt, job.style) == ("pastel a circle", "dark", "my:mine")
    await world.alice.slash(world.art, "style remove", name="MY:mine")
    assert await styles(world).personal_styles(world.guild.id, world.alice.id) == []


async def test_a_server_style_wins_over_a_personal_one_of_the_same_name_unless_my_is_used(world):
    await world.mod.slash(world.art, "mod style add", name="ink", prompt="server ink {prompt}")
    await world.alice.slash(world.art, "style save", name="ink", prompt="my ink {prompt}")
    await world.alice.slash(world.art, "imagine", prompt="a", style="ink")
    assert (await world.latest_job()).prompt == "server ink a"
    await world.alice.slash(world.art, "imagine", prompt="b", style="my:ink")
    assert (await world.latest_job()).prompt == "my ink b"


async def test_personal_styles_are_capped(world):
    for i in range(MAX_PERSONAL_STYLES):
        await styles(world).save_personal(world.guild.id, world.alice.id, f"s{i}", "{prompt}")
    refused = await world.alice.slash(world.art, "style save", name="one-more", prompt="{prompt} more")
    assert refused.ephemeral and f"{MAX_PERSONAL_STYLES} personal styles" in refused.response.content
    # Replacing one of the same name is no new style.
    replaced = await world.alice.slash(world.art, "style save", name="s0", prompt="new {prompt}")
    assert "Replaced" in replaced.response.content
    assert len(await styles(world).personal_styles(world.guild.id, world.alice.id)) == MAX_PERSONAL_STYLES


async def test_the_style_autocomplete_offers_the_servers_and_the_members_own(world):
    await world.mod.slash(world.art, "mod style add", name="ink", prompt="ink {prompt}")
    await world.mod.slash(world.art, "mod style add", name="neon", prompt="neon {prompt}")
    await world.alice.slash(world.art, "style save", name="inky", prompt="inky {prompt}")
    await world.bob.slash(world.art, "style save", name="bobs", prompt="bob {prompt}")
    every = await world.alice.autocomplete(world.art, "imagine", "style", "")
    assert [c["value"] for c in every] == ["ink", "neon", "my:inky"]
    assert every[2]["name"].startswith("my:inky — yours")
    typed = await world.alice.autocomplete(world.art, "imagine", "style", "ink")
    assert [c["value"] for c in typed] == ["ink", "my:inky"]


async def test_reroll_and_variation_keep_the_style_and_info_shows_it(world):
    await world.mod.slash(world.art, "mod style add", name="ink", prompt="ink drawing of {prompt}")
    await world.alice.slash(world.art, "imagine", prompt="a red circle", style="ink", count=2)
    job = await world.latest_job()
    message = await world.finish(job.id)
    await world.alice.click(message, custom_id=job_custom_id(job.id, "r"))
    rerolled = await world.latest_job()
    assert (rerolled.prompt, rerolled.style) == (job.prompt, "ink")  # not expanded twice
    await world.alice.click(message, custom_id=job_custom_id(job.id, "vs", 1))
    varied = await world.latest_job()
    assert (varied.mode, varied.style) == ("variation", "ink")
    info = await world.bob.click(message, custom_id=job_custom_id(job.id, "i"))
    fields = {f.name: f.value for f in info.response.embeds[0].fields}
    assert fields["Style"] == "ink"


def test_the_style_field_leaves_old_requests_alone_and_reaches_the_png_metadata():
    plain = GenerationRequest("a red circle", seed=5, steps=8, width=64, height=64)
    assert "style" not in plain.to_dict() and request_digest(plain) == "24e46a5dc0af37e4"
    styled = plain.with_(style="my:ink")
    assert GenerationRequest.from_json(styled.to_json()) == styled
    assert parse_parameters(format_parameters(styled, 5, 64, 64, "shapes"))["Style"] == "my:ink"
    assert "Style" not in parse_parameters(format_parameters(plain, 5, 64, 64, "shapes"))
    with pytest.raises(ValueError, match="style"):
        GenerationRequest("x", style="y" * 40)


def test_names_are_checked_strictly():
    assert check_name("  Ink_Wash-2 ") == "ink_wash-2"
    for bad in ("", "-ink", "ink wash", "ink:x", "<@1>", "i" * 33, "ínk"):
        with pytest.raises(InvalidSetting):
            check_name(bad)
