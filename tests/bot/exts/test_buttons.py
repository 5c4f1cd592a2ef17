"""Job buttons: each action, ownership rules, and clicks after a restart."""

from __future__ import annotations

from bot.ui.buttons import job_custom_id
from generation.protocol.contract import STRENGTH_STRONG, STRENGTH_SUBTLE


async def posted_job(world, prompt="a red circle"):
    await world.alice.slash(world.art, "imagine", prompt=prompt)
    job = await world.latest_job()
    message = await world.finish(job.id)
    return job, message


async def test_upscale_button_queues_an_upscale_of_that_image(world):
    """U2 makes a one-image upscale job whose source is image 2 of the job."""
    job, message = await posted_job(world)
    result = await world.alice.click(message, custom_id=job_custom_id(job.id, "u", 1))
    new = await world.latest_job()
    assert new.mode == "upscale" and new.source_job_id == job.id and new.source_image_index == 1 and new.num_images == 1
    assert new.seed == job.seed + 1
    assert "Queued" in result.response.embeds[0].description


async def test_variation_buttons_use_subtle_and_strong_strength(world):
    """V3 varies image 3 subtly, V3 strong strongly, each as a new grid."""
    job, message = await posted_job(world)
    await world.alice.click(message, custom_id=job_custom_id(job.id, "vs", 2))
    subtle = await world.latest_job()
    await world.alice.click(message, custom_id=job_custom_id(job.id, "vS", 2))
    strong = await world.latest_job()
    assert (subtle.mode, subtle.strength, subtle.source_image_index, subtle.num_images) == ("variation", STRENGTH_SUBTLE, 2, 4)
    assert (strong.mode, strong.strength) == ("variation", STRENGTH_STRONG)


async def test_reroll_runs_the_same_prompt_with_a_new_seed(world):
    """🔄 copies every parameter but draws a new seed."""
    job, message = await posted_job(world)
    await world.alice.click(message, custom_id=job_custom_id(job.id, "r"))
    new = await world.latest_job()
    assert new.id != job.id and new.prompt == job.prompt and (new.steps, new.width) == (job.steps, job.width)
    assert new.seed != job.seed


async def test_remix_modal_reruns_with_the_edited_prompt(world):
    """✏️ opens a modal holding the prompt; submitting an edit queues a job with the new prompt."""
    job, message = await posted_job(world)
    shown = await world.alice.click(message, custom_id=job_custom_id(job.id, "e"))
    assert shown.modal is not None
    await world.alice.submit_modal(shown, {"prompt": "a blue square", "negative": "blurry"})
    new = await world.latest_job()
    assert (new.prompt, new.negative_prompt, new.mode) == ("a blue square", "blurry", "txt2img")


async def test_info_button_shows_parameters_ephemerally(world):
    """ℹ️ answers only the clicker with the job's seed and prompt."""
    job, message = await posted_job(world)
    result = await world.bob.click(message, custom_id=job_custom_id(job.id, "i"))
    assert result.ephemeral
    fields = {f.name: f.value for f in result.response.embeds[0].fields}
    assert fields["Seed"] == str(job.seed) and "red circle" in fields["Prompt"]


async def test_delete_is_refused_to_others_and_allowed_to_the_owner(world):
    """🗑️ by another member is refused; by the owner it deletes the result message."""
    job, message = await posted_job(world)
    refused = await world.bob.click(message, custom_id=job_custom_id(job.id, "d"))
    assert refused.ephemeral and "not yours" in refused.response.content
    await world.alice.click(message, custom_id=job_custom_id(job.id, "d"))
    assert all(m.id != message.id for m in world.art.history())


async def test_moderator_may_delete_and_it_is_audited(world):
    """A moderator deletes someone else's result, and the audit log says so."""
    job, message = await posted_job(world)
    await world.mod.click(message, custom_id=job_custom_id(job.id, "d"))
    assert all(m.id != message.id for m in world.art.history())
    entries = await world.services.audit.recent(world.guild.id)
    assert any(e.action == "job.delete" and e.actor_id == world.mod.id for e in entries)


async def test_cancel_refunds_and_updates_the_message(world):
    """✖ on a queued job cancels it, refunds the images and tells the worker."""
    await world.alice.slash(world.art, "imagine", prompt="a red circle")
    job = await world.latest_job()
    progress = world.last()
    before = await world.services.quota.status(world.guild.id, world.alice.id, [])
    result = await world.alice.click(progress, custom_id=job_custom_id(job.id, "x"))
    after = await world.services.quota.status(world.guild.id, world.alice.id, [])
    assert (await world.services.jobs.get(job.id)).status == "cancelled"
    assert before.used == 400 and after.used == 0  # 4 credits, given back
    assert world.dispatcher.cancelled == [job.id]
    assert "Cancelled" in result.response.embeds[0].description


async def test_cancel_by_another_member_is_refused(world):
    """Only the owner (or a moderator) can cancel a job."""
    await world.alice.slash(world.art, "imagine", prompt="a red circle")
    job = await world.latest_job()
    result = await world.bob.click(world.last(), custom_id=job_custom_id(job.id, "x"))
    assert result.ephemeral and (await world.services.jobs.get(job.id)).status == "queued"


async def test_buttons_work_after_a_restart(world):
    """A grid posted before a restart still answers V1 and 🔄 afterwards: the state is in the custom_id and the DB."""
    job, message = await posted_job(world)
    await world.restart()
    await world.alice.click(message, custom_id=job_custom_id(job.id, "vs", 0))
    varied = await world.latest_job()
    await world.alice.click(message, custom_id=job_custom_id(job.id, "r"))
    rerolled = await world.latest_job()
    assert varied.source_job_id == job.id and rerolled.prompt == job.prompt and rerolled.id != varied.id


async def test_remix_modal_opened_before_a_restart_still_submits(world):
    """A remix modal shown before a restart and submitted after it still queues the job."""
    job, message = await posted_job(world)
    shown = await world.alice.click(message, custom_id=job_custom_id(job.id, "e"))
    await world.restart()
    await world.alice.submit_modal(shown, {"prompt": "a green star"})
    assert (await world.latest_job()).prompt == "a green star"



async def test_buttons_work_on_a_month_old_message(world):
    """A month after posting (long past any interaction token), 🔄 and ℹ️ still answer."""
    job, message = await posted_job(world)
    await world.env.advance_time(30 * 24 * 3600)
    info = await world.bob.click(message, custom_id=job_custom_id(job.id, "i"))
    await world.alice.click(message, custom_id=job_custom_id(job.id, "r"))
    assert info.ephemeral and (await world.latest_job()).prompt == job.prompt
