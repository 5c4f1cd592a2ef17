"""/describe, "Describe this image" and "Imagine from this image": the describe job (only where a served model has a
captioner), its posted suggestions (escaped, no pings) with a button each that starts /imagine, the context menus
and the prompt modal, also after a restart; refusals charge nothing."""

from __future__ import annotations

import dataclasses
import json

from bot.dispatch.recorder import SUGGESTIONS_SUFFIX
from bot.exts.describe.flow import DESCRIBE_COST
from bot.ui.buttons import job_custom_id
from tests.bot.exts.conftest import SHAPES, png

#: The shapes card with its attribute classifier as captioner.
CAPTIONED = dataclasses.replace(SHAPES, captioner="shapes attribute classifier")
SAID = ("a red circle on white", "a round red shape <@123>", "@everyone a circle", "**bold** red disc")


async def used(world, member=None) -> int:
    return (await world.services.quota.status(world.guild.id, (member or world.alice).id, [])).used


async def describe_posted(world, job_id: int, said=SAID):
    """Play the worker and the recorder: the suggestions stored, the job succeeded, its result posted."""
    await world.services.jobs.start(job_id, worker="test")
    world.services.images.save(job_id, 0, json.dumps(list(said)).encode(), suffix=SUGGESTIONS_SUFFIX)
    await world.services.jobs.succeed(job_id, [])
    message = await world.bot.presenter.job_succeeded(job_id)
    await world.env.settle()
    return message


async def test_describe_is_not_available_without_a_captioner_and_charges_nothing(world):
    result = await world.alice.slash(world.art, "describe", image=("a.png", png()))
    assert result.ephemeral and "not available on this server" in result.response.content
    assert await used(world) == 0 and world.dispatcher.published == []


async def test_describe_posts_escaped_suggestions_whose_buttons_start_imagine(world):
    world.dispatcher.cards = [CAPTIONED]
    result = await world.alice.slash(world.art, "describe", image=("a.png", png()))
    assert not result.ephemeral, result.response.content
    job = await world.latest_job()
    # A describe job costs a quarter of a credit (DESCRIBE_COST units); the upload nothing.
    assert (job.mode, job.num_images, job.prompt, job.cost) == ("describe", 1, "", DESCRIBE_COST) == (
        "describe", 1, "", 25)
    assert job.source_job_id is not None and await used(world) == 25
    message = await describe_posted(world, job.id)
    text = message.embeds[0].description
    assert "a red circle on white" in text and "<@123>" not in text and "@everyone" not in text
    assert "\\*\\*bold\\*\\*" in text  # markdown shown as typed
    ids = {c.custom_id for row in message.components for c in row.children}
    assert {job_custom_id(job.id, "p", i) for i in range(4)} <= ids
    await world.alice.click(message, custom_id=job_custom_id(job.id, "p", 1))
    drawn = await world.latest_job()
    assert (drawn.mode, drawn.prompt, drawn.num_images) == ("txt2img", "a round red shape <@123>", 4)
    assert await used(world) == 25 + 400  # the describe job, then a grid at the defaults
    # After a restart the buttons still work.
    await world.restart()
    await world.bob.click(message, custom_id=job_custom_id(job.id, "p", 0))
    assert (await world.latest_job()).prompt == "a red circle on white" and await used(world, world.bob) == 400


async def test_describe_refuses_an_attachment_that_is_not_an_image_and_charges_nothing(world):
    world.dispatcher.cards = [CAPTIONED]
    result = await world.alice.slash(world.art, "describe", image=("a.png", b"GIF89a not really"))
    assert result.ephemeral and "not a PNG, JPEG or WebP image" in result.response.content
    assert await used(world) == 0 and world.dispatcher.published == []


async def test_describe_this_image_context_menu(world):
    world.dispatcher.cards = [CAPTIONED]
    posted = await world.bob.send(world.art, "look", attachments=[("shape.png", png(size=(96, 64)))])
    await world.alice.context_menu(world.art, "Describe this image", posted)
    job = await world.latest_job()
    assert job.mode == "describe" and job.user_id == world.alice.id
    plain = await world.bob.send(world.art, "no picture here")
    result = await world.alice.context_menu(world.art, "Describe this image", plain)
    assert result.ephemeral and "no image attachment" in result.response.content


async def test_imagine_from_this_image_opens_the_prompt_modal_and_makes_an_img2img_job_after_a_restart(world):
    posted = await world.bob.send(world.art, "my sketch", attachments=[("sketch.png", png((0, 0, 200)))])
    shown = await world.alice.context_menu(world.art, "Imagine from this image", posted)
    assert shown.modal is not None and await used(world) == 0
    await world.restart()
    await world.alice.submit_modal(shown, {"prompt": "a blue lake", "strength": "0.3"})
    job = await world.latest_job()
    assert (job.mode, job.prompt, job.strength, job.num_images) == ("img2img", "a blue lake", 0.3, 4)
    stored = await world.services.jobs.get_image(job.source_job_id, 0)
    assert world.services.images.read(stored.path, stored.sha256)
    again = await world.alice.context_menu(world.art, "Imagine from this image", posted)
    bad = await world.alice.submit_modal(again, {"prompt": "a lake", "strength": "2"})
    assert bad.ephemeral and "from 0 to 1" in bad.response.content


async def test_show_and_history_answer_for_a_describe_job_and_its_upload(world):
    world.dispatcher.cards = [CAPTIONED]
    await world.alice.slash(world.art, "describe", image=("a.png", png()))
    job = await world.latest_job()
    await describe_posted(world, job.id)
    for shown_id in (job.id, job.source_job_id):
        result = await world.alice.slash(world.art, "show", job=shown_id)
        assert result.response is not None and "went wrong" not in (result.response.content or "")
    history = await world.alice.slash(world.art, "history")
    assert history.response is not None and "went wrong" not in (history.response.content or "")
