"""/imagine: validation, refusals, the queued message, and the posted grid."""

from __future__ import annotations

from bot.ui.buttons import job_custom_id


async def test_imagine_queues_a_job_and_shows_a_queued_message(world):
    """In an art channel, /imagine reserves the images, hands the job to the queue and shows it queued."""
    result = await world.alice.slash(world.art, "imagine", prompt="a red circle")
    job = await world.latest_job()
    assert world.dispatcher.published == [job.id]
    assert job.prompt == "a red circle" and job.width == 64 and job.steps == 4
    message = result.response.message
    assert "Queued" in message.embeds[0].description
    assert [c["custom_id"] for row in result.response.components for c in row["components"]] == [job_custom_id(job.id, "x")]
    assert (await world.services.jobs.get(job.id)).progress_message_id == message.id


async def test_imagine_outside_art_channels_refuses_with_a_hint(world):
    """Outside the art channels the member gets an ephemeral refusal naming where to go, and nothing is queued."""
    result = await world.alice.slash(world.other, "imagine", prompt="a red circle")
    assert result.ephemeral
    assert f"<#{world.art.id}>" in result.response.content
    assert world.dispatcher.published == []


async def test_grid_is_posted_as_a_channel_message_with_all_buttons(world):
    """A finished job is posted by the bot in the channel with U1–U4, V1–V4, 🔄, ✏️, ℹ️ and 🗑️."""
    await world.alice.slash(world.art, "imagine", prompt="a red circle")
    job = await world.latest_job()
    posted = await world.finish(job.id)
    assert posted is not None and posted.channel.id == world.art.id
    ids = {c.custom_id for row in posted.components for c in row.children}
    for i in range(4):
        assert job_custom_id(job.id, "u", i) in ids and job_custom_id(job.id, "vs", i) in ids and job_custom_id(job.id, "vS", i) in ids
    assert {job_custom_id(job.id, a) for a in "reid"} <= ids
    assert posted.attachments[0].filename == f"job{job.id}.png"
    assert (await world.services.jobs.get(job.id)).status == "posted"


async def test_result_is_posted_only_once(world):
    """Presenting the same finished job twice posts one message."""
    await world.alice.slash(world.art, "imagine", prompt="a red circle")
    job = await world.latest_job()
    await world.finish(job.id)
    again = await world.bot.presenter.job_succeeded(job.id)
    assert again is None
    grids = [m for m in world.art.history() if m.components and m.attachments]
    assert len(grids) == 1
