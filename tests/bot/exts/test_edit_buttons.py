"""Vary (Region), Zoom Out, Pan and Make square on a single-image result: the buttons (only where the model can
redraw part of an image), the ephemeral region menu, the prompt modal, the jobs they make, and all of it after a
restart."""

from __future__ import annotations

import dataclasses

from bot.ui.buttons import job_custom_id
from generation.protocol.contract import STRENGTH_INPAINT
from generation.protocol.regions import OUTPAINTS
from tests.bot.exts.conftest import SHAPES

#: The shapes card able to redraw part of an image (Vary (Region), Zoom Out, Pan).
EDITING = dataclasses.replace(SHAPES, inpainting=True)


def button_ids(message) -> set[str]:
    return {c.custom_id for row in message.components for c in row.children}


async def upscaled(world, size: str | None = None):
    """A posted grid, U1 on it, and the posted upscale: (upscale job, its message)."""
    options = {"size": size} if size else {}
    await world.alice.slash(world.art, "imagine", prompt="a red circle", **options)
    grid_job = await world.latest_job()
    grid = await world.finish(grid_job.id)
    await world.alice.click(grid, custom_id=job_custom_id(grid_job.id, "u", 0))
    up = await world.latest_job()
    return up, await world.finish(up.id)


def oid(job_id: int, kind: str) -> str:
    return job_custom_id(job_id, "o", OUTPAINTS.index(kind))


async def test_the_single_image_result_has_the_editing_buttons_and_make_square_only_when_not_square(world):
    world.dispatcher.cards = [EDITING]
    up, message = await upscaled(world)
    ids = button_ids(message)
    assert job_custom_id(up.id, "vr") in ids
    assert {oid(up.id, k) for k in ("zoom_2", "zoom_1.5", "pan_left", "pan_right", "pan_up", "pan_down")} <= ids
    assert oid(up.id, "square") not in ids  # 64x64: square already
    tall, tall_message = await upscaled(world, size="64x128")
    assert oid(tall.id, "square") in button_ids(tall_message)


async def test_a_model_that_cannot_inpaint_shows_no_editing_buttons_and_refuses_a_click(world):
    up, message = await upscaled(world)  # SHAPES: no inpainting
    assert job_custom_id(up.id, "vr") not in button_ids(message)
    jobs = len(await world.services.jobs.queue())
    result = await world.alice.click(message, custom_id=job_custom_id(up.id, "vs", 0))
    assert not result.ephemeral  # the ordinary Vary still works
    # A click made from an older message (the card changed since) is refused with the reason, nothing queued.
    world.dispatcher.cards = [EDITING]
    editable_job, editable = await upscaled(world)
    world.dispatcher.cards = [SHAPES]
    before = len(await world.services.jobs.queue())
    result = await world.alice.click(editable, custom_id=job_custom_id(editable_job.id, "vr"))
    assert result.ephemeral and "cannot redraw part of an image" in result.response.content
    assert len(await world.services.jobs.queue()) == before and before > jobs


async def test_vary_region_menu_then_prompt_modal_makes_an_inpaint_job(world):
    world.dispatcher.cards = [EDITING]
    up, message = await upscaled(world)
    shown = await world.alice.click(message, custom_id=job_custom_id(up.id, "vr"))
    assert shown.ephemeral and shown.response.components
    queued = len(await world.services.jobs.queue())
    picked = await world.alice.select(shown.response.message, ["cells:4"], custom_id=f"region:{up.id}")
    assert picked.modal is not None and "Cell 4" in picked.modal["title"]
    assert len(await world.services.jobs.queue()) == queued  # nothing is charged before the modal is submitted
    await world.alice.submit_modal(picked, {"prompt": "a blue circle"})
    job = await world.latest_job()
    assert (job.mode, job.region, job.prompt, job.num_images) == ("inpaint", "cells:4", "a blue circle", 1)
    assert (job.source_job_id, job.source_image_index, job.strength) == (up.id, 0, STRENGTH_INPAINT)
    assert (job.width, job.height) == (64, 64)
    posted = await world.finish(job.id)
    assert job_custom_id(job.id, "vr") in button_ids(posted)  # an edit can be edited again
    await world.alice.click(posted, custom_id=oid(job.id, "zoom_2"))
    zoom = await world.latest_job()
    assert (zoom.mode, zoom.outpaint, zoom.region, zoom.source_job_id) == ("outpaint", "zoom_2", "", job.id)


async def test_zoom_out_pan_and_make_square_make_outpaint_jobs(world):
    world.dispatcher.cards = [EDITING]
    up, message = await upscaled(world, size="64x128")
    for kind in ("zoom_2", "zoom_1.5", "pan_right", "pan_up", "square"):
        await world.alice.click(message, custom_id=oid(up.id, kind))
        job = await world.latest_job()
        assert (job.mode, job.outpaint, job.source_job_id, job.num_images) == ("outpaint", kind, up.id, 1)
        assert (job.width, job.height) == (64, 128)  # the source's size; the worker grows the canvas
        await world.services.jobs.cancel(job.id, world.alice.id)  # room for the next (a member's active jobs cap)
    # The grid and the upscale stay charged; each cancelled outpaint is refunded.
    status = await world.services.quota.status(world.guild.id, world.alice.id, [])
    kept = sum(j.cost for j in (await world.services.jobs.history(world.guild.id, world.alice.id, 20))
               if j.charge_state != "refunded")
    assert status.used == kept and kept == (await world.services.jobs.get(up.source_job_id)).cost + up.cost


async def test_editing_buttons_menu_and_modal_work_after_a_restart(world):
    world.dispatcher.cards = [EDITING]
    up, message = await upscaled(world)
    shown = await world.alice.click(message, custom_id=job_custom_id(up.id, "vr"))
    await world.restart()
    world.dispatcher.cards = [EDITING]
    picked = await world.alice.select(shown.response.message, ["left"], custom_id=f"region:{up.id}")
    await world.restart()
    await world.alice.submit_modal(picked, {"prompt": "a left side"})
    job = await world.latest_job()
    assert (job.mode, job.region) == ("inpaint", "left")
    await world.alice.click(message, custom_id=oid(up.id, "pan_left"))
    assert (await world.latest_job()).outpaint == "pan_left"


async def test_a_banned_member_gets_no_modal_and_another_member_the_prompt(world):
    world.dispatcher.cards = [EDITING]
    up, message = await upscaled(world)
    await world.services.moderation.ban(world.guild.id, world.bob.id, world.mod.id, reason="spam")
    shown = await world.bob.click(message, custom_id=job_custom_id(up.id, "vr"))
    picked = await world.bob.select(shown.response.message, ["left"], custom_id=f"region:{up.id}")
    assert picked.modal is None and picked.ephemeral and "banned" in picked.response.content
    await world.services.moderation.unban(world.guild.id, world.bob.id, world.mod.id)
    # Bob may see the job (it is in a channel he sees): the modal holds its prompt to edit.
    picked = await world.bob.select(shown.response.message, ["left"], custom_id=f"region:{up.id}")
    assert picked.modal is not None and "a red circle" in str(picked.modal)


async def test_upscale_2x_and_4x_refine_within_the_model_limit_and_skip_the_refine_beyond(world):
    """SHAPES draws at most 256 px a side, so an upscale refines up to 512: a 256 px image upscaled 2x is refined,
    4x (1024 px) is a plain enlargement (strength 0); both buttons are there, also after a restart."""
    up, message = await upscaled(world, size="256x256")
    ids = button_ids(message)
    assert {job_custom_id(up.id, "m", 2), job_custom_id(up.id, "m", 4)} <= ids
    await world.restart()
    await world.alice.click(message, custom_id=job_custom_id(up.id, "m", 2))
    two = await world.latest_job()
    assert (two.mode, two.upscale_factor, two.source_job_id, (two.width, two.height)) == ("upscale", 2, up.id, (256, 256))
    assert two.strength > 0
    await world.services.jobs.cancel(two.id, world.alice.id)
    await world.alice.click(message, custom_id=job_custom_id(up.id, "m", 4))
    four = await world.latest_job()
    assert (four.upscale_factor, four.strength) == (4, 0.0)


def test_upscale_buttons_only_for_factors_that_stay_within_the_largest_upscale():
    from bot.exts.imagine.presenter import upscale_factors

    assert upscale_factors(SHAPES, (1024, 512)) == (2, 4)
    assert upscale_factors(SHAPES, (1536, 512)) == (2,)
    assert upscale_factors(SHAPES, (2048, 2048)) == (2,) and upscale_factors(SHAPES, (2056, 64)) == ()
    assert upscale_factors(None, (64, 64)) == () and upscale_factors(SHAPES, None) == ()
