"""`/imagine hires:` (the hires fix) recorded with the job, shown by ℹ️ and reused by 🔄 and V (an upscale sets it
off); and "Imagine from this image" refused, free, to a member who can not read the image's channel."""

from __future__ import annotations

import dataclasses

import discord
from simcord import actors as sim_actors
from simcord.enums import InteractionType
from sqlalchemy import func, select

from bot.db.models import Job
from bot.exts.common import option_problem
from bot.exts.imagine.cog import Imagine
from bot.ui.buttons import job_custom_id
from tests.bot.exts.conftest import SHAPES, png


async def used(world, member=None) -> int:
    return (await world.services.quota.status(world.guild.id, (member or world.alice).id, [])).used


async def job_count(world) -> int:
    async with world.services.sessions() as s:
        return (await s.execute(select(func.count()).select_from(Job))).scalar_one()


def fields_of(result) -> dict[str, str]:
    return {f.name: f.value for f in result.response.embeds[0].fields}


async def test_hires_is_recorded_shown_and_reused_by_reroll_and_vary(world):
    result = await world.alice.slash(world.art, "imagine", prompt="a red circle", size="128x128", hires=2.0)
    assert not result.ephemeral, result.response.content
    job = await world.latest_job()
    assert (job.hires, job.width, job.height, job.mode) == (2.0, 128, 128, "txt2img")
    assert '"hires":2.0' in job.request.to_json(with_image=False)
    message = await world.finish(job.id)
    shown = await world.alice.click(message, custom_id=job_custom_id(job.id, "i"))
    assert fields_of(shown)["Hires"].startswith("2×")
    await world.alice.click(message, custom_id=job_custom_id(job.id, "r"))
    again = await world.latest_job()
    assert again.id != job.id and (again.hires, again.mode) == (2.0, "txt2img")
    await world.finish(again.id)  # at most two jobs at a time
    await world.alice.click(message, custom_id=job_custom_id(job.id, "vs", 1))
    vary = await world.latest_job()
    assert (vary.mode, vary.hires, vary.source_job_id) == ("variation", 2.0, job.id)
    await world.finish(vary.id)
    clicked = await world.alice.click(message, custom_id=job_custom_id(job.id, "u", 0))
    assert not clicked.ephemeral, clicked.response.content
    up = await world.latest_job()
    assert (up.mode, up.hires) == ("upscale", 0.0)


async def test_without_hires_nothing_is_recorded_or_shown(world):
    await world.alice.slash(world.art, "imagine", prompt="a red circle", hires=1.5)
    assert (await world.latest_job()).hires == 1.5
    await world.alice.slash(world.art, "imagine", prompt="a blue square")
    job = await world.latest_job()
    assert job.hires == 0.0 and "hires" not in job.request.to_json(with_image=False)
    message = await world.finish(job.id)
    assert "Hires" not in fields_of(await world.alice.click(message, custom_id=job_custom_id(job.id, "i")))


async def test_hires_without_a_size_makes_the_usual_size_larger_within_the_models_sides(world):
    # The shapes card draws 64x64 by default and at most 256 a side: 2x gives 128x128, its first pass the usual 64.
    await world.alice.slash(world.art, "imagine", prompt="a red circle", hires=2.0)
    assert ((job := await world.latest_job()).width, job.height) == (128, 128)
    await world.alice.slash(world.art, "imagine", prompt="a red circle", hires=1.5, aspect="16:9")
    wide = await world.latest_job()
    assert wide.width > wide.height and (wide.width, wide.height) != (SHAPES.default_width, SHAPES.default_height)
    assert wide.width <= SHAPES.max_side and wide.width % SHAPES.multiple == 0


def test_hires_size_keeps_the_aspect_where_the_model_s_largest_side_stops_it():
    from bot.exts.imagine.options import hires_size

    assert hires_size(64, 64, 2.0, SHAPES) == (128, 128)
    assert hires_size(192, 96, 2.0, SHAPES) == (256, 128)  # 384 would pass 256: the factor becomes 4/3


async def test_hires_on_a_text_only_model_is_refused_free(world):
    world.dispatcher.cards = [dataclasses.replace(SHAPES, img2img=False)]
    result = await world.alice.slash(world.art, "imagine", prompt="a red circle", hires=2.0)
    assert result.ephemeral and "no hires fix" in result.response.content
    assert world.dispatcher.published == [] and await used(world) == 0 and await job_count(world) == 0


def test_hires_takes_its_two_choices_only():
    param = {p.name: p for p in Imagine.imagine.parameters}["hires"]
    assert [c.value for c in param.choices] == [1.5, 2.0] and [c.name for c in param.choices] == ["1.5×", "2×"]
    assert option_problem(param, 2.0) is None and "one of" in option_problem(param, 3.0)


# --- "Imagine from this image": the member has to be able to read the image's channel -----------------------------
def private_channel(world, **bob_perms):
    """A channel alice (and the bot) can read; bob gets `bob_perms` there (nothing: he can not view it)."""
    overwrites = {
        world.guild.default_role: discord.PermissionOverwrite(view_channel=False),
        world.alice: discord.PermissionOverwrite(view_channel=True, read_message_history=True),
        world.bot.user: discord.PermissionOverwrite(view_channel=True, read_message_history=True),
    }
    if bob_perms:
        overwrites[world.bob] = discord.PermissionOverwrite(**bob_perms)
    return world.guild.create_text_channel("private", overwrites=overwrites)


async def submit_image_modal(world, member, channel, values):
    """Alice's picture in `channel`, and `member` sending the "Imagine from this image" modal for it from the art
    channel, as a hand-made request can: a modal's custom_id (which names the channel, message and attachment) comes
    from the client."""
    posted = await world.alice.send(channel, "mine", attachments=[("secret.png", png((200, 0, 0)))])
    rows = [{"type": 1, "components": [{"type": 4, "custom_id": key, "value": value}]} for key, value in values.items()]
    data = {"custom_id": f"img2img:{channel.id}:{posted.id}:{posted.attachments[0].id}", "components": rows}
    return await sim_actors._dispatch_actor_interaction(member, InteractionType.MODAL_SUBMIT, world.art, data)


async def test_a_member_who_can_not_view_the_images_channel_is_refused_free(world):
    channel = private_channel(world)
    result = await submit_image_modal(world, world.bob, channel, {"prompt": "a copy", "strength": "0.5"})
    assert result.ephemeral and "can not read the channel" in result.response.content
    assert await used(world, world.bob) == 0 and await job_count(world) == 0
    assert world.dispatcher.published == []


async def test_viewing_without_the_message_history_is_refused_too(world):
    channel = private_channel(world, view_channel=True, read_message_history=False)
    result = await submit_image_modal(world, world.bob, channel, {"prompt": "a copy"})
    assert result.ephemeral and "Read Message History" in result.response.content
    assert await job_count(world) == 0


async def test_a_member_who_can_read_the_channel_gets_the_job(world):
    channel = private_channel(world, view_channel=True, read_message_history=True)
    result = await submit_image_modal(world, world.bob, channel, {"prompt": "a copy", "strength": "0.5"})
    assert not result.ephemeral, result.response.content
    job = await world.latest_job()
    assert (job.mode, job.user_id, job.strength) == ("img2img", world.bob.id, 0.5)
