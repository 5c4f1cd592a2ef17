"""Who sees a job (bot.exts.common.can_see_job): /show, ℹ️, ✏️ and the PNG metadata follow one rule; 🗑️ deletes a
job's result for good; blocked terms apply to the negative prompt too."""

from __future__ import annotations

import io

import discord
from PIL import Image, PngImagePlugin

from bot.ui.buttons import grid_view, job_custom_id


def png_with_parameters(text: str, color=(200, 30, 30), size=(64, 64)) -> bytes:
    """A PNG with an A1111 `parameters` chunk, as the worker writes it."""
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text)
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="PNG", pnginfo=info)
    return out.getvalue()


async def finish_with_metadata(world, job_id: int) -> discord.Message:
    """Run job `job_id` to success with images carrying their prompt in a `parameters` chunk, then post it."""
    job = await world.services.jobs.get(job_id)
    await world.services.jobs.start(job_id, worker="test")
    new = []
    for i in range(job.num_images):
        stored = world.services.images.save(job_id, i, png_with_parameters(f"{job.prompt}\nSeed: {job.seed + i}"))
        new.append((i, job.seed + i, stored.path, stored.sha256, False))
    await world.services.jobs.succeed(job_id, new)
    message = await world.bot.presenter.job_succeeded(job_id)
    await world.env.settle()
    return message


def secret_channel(world):
    """An art channel only alice (and the bot) can view."""
    channel = world.guild.create_text_channel("secret", overwrites={
        world.guild.default_role: discord.PermissionOverwrite(view_channel=False),
        world.alice: discord.PermissionOverwrite(view_channel=True),
        world.bot.user: discord.PermissionOverwrite(view_channel=True),
    })
    return channel


async def secret_job(world, prompt="a hidden red circle"):
    channel = secret_channel(world)
    await world.services.moderation.add_art_channel(world.guild.id, channel.id, by=world.mod.id)
    await world.alice.slash(channel, "imagine", prompt=prompt, negative="blue")
    job = await world.latest_job()
    message = await world.finish(job.id)
    assert message.channel.id == channel.id
    return job, message


async def copy_of_buttons(world, job, channel=None):
    """Another message (in the art channel unless told) carrying the buttons of `job`: what a forwarded or crafted
    message would look like to the bot."""
    target = world.bot.get_channel((channel or world.art).id)
    sent = await target.send("a copy of the buttons", view=grid_view(job.id, job.num_images))
    await world.env.settle()
    return sent


def field_names(result) -> set[str]:
    return {f.name for f in result.response.embeds[0].fields}


async def test_show_of_a_job_in_a_channel_bob_cannot_view(world):
    """/show is refused to a member who can not view the job's channel, and allowed to its owner and a moderator."""
    job, _ = await secret_job(world)
    refused = await world.bob.slash(world.art, "show", job=job.id)
    assert refused.ephemeral and "can not see" in refused.response.content
    assert "hidden red circle" not in refused.response.content and not refused.response.attachments
    owner = await world.alice.slash(world.art, "show", job=job.id)
    moderator = await world.mod.slash(world.art, "show", job=job.id)
    for result in (owner, moderator):
        fields = {f.name: f.value for f in result.response.embeds[0].fields}
        assert "hidden red circle" in fields["Prompt"] and result.response.attachments


async def test_show_of_a_job_in_a_channel_bob_can_view(world):
    """Any member who can view the job's channel sees it with /show (the rule is the channel, not ownership)."""
    await world.alice.slash(world.art, "imagine", prompt="a red circle")
    job = await world.latest_job()
    await world.finish(job.id)
    result = await world.bob.slash(world.other, "show", job=job.id)
    assert "red circle" in {f.name: f.value for f in result.response.embeds[0].fields}["Prompt"]


async def test_info_and_remix_by_others_show_no_prompt(world):
    """ℹ️ and ✏️ on buttons of a job bob may not see (here: a copy of its buttons where bob can click them) show him
    neither the prompt nor the negative prompt; 🔄 and V are refused to him; alice still gets all of it."""
    job, _ = await secret_job(world)
    copy = await copy_of_buttons(world, job)
    info = await world.bob.click(copy, custom_id=job_custom_id(job.id, "i"))
    assert info.ephemeral and "Prompt" not in field_names(info) and "Negative prompt" not in field_names(info)
    assert "hidden" not in str(info.response.embeds[0].to_dict())
    shown = await world.bob.click(copy, custom_id=job_custom_id(job.id, "e"))
    assert shown.modal is not None and "hidden" not in str(shown.modal) and "blue" not in str(shown.modal)
    before = len(world.dispatcher.published)
    for action, index in (("r", None), ("vs", 0), ("u", 0)):
        refused = await world.bob.click(copy, custom_id=job_custom_id(job.id, action, index))
        assert refused.ephemeral and "can not see" in refused.response.content
    assert len(world.dispatcher.published) == before
    own = await world.alice.click(copy, custom_id=job_custom_id(job.id, "i"))
    assert {"Prompt", "Negative prompt"} <= field_names(own)
    own_modal = await world.alice.click(copy, custom_id=job_custom_id(job.id, "e"))
    assert "hidden red circle" in str(own_modal.modal)


async def test_delete_removes_files_and_hides_the_job_from_all_but_moderators(world):
    """After 🗑️ the job's image files (and its cached grid) are gone; /show refuses it to its owner and to others,
    shows a moderator its parameters without images; its buttons say it was deleted. The row stays (quota)."""
    await world.alice.slash(world.art, "imagine", prompt="a red circle")
    job = await world.latest_job()
    message = await world.finish(job.id)
    await world.bob.slash(world.art, "show", job=job.id)  # caches the grid
    stored = await world.services.jobs.get(job.id)
    files = [world.services.images.absolute(i.path) for i in stored.images]
    grids = list(files[0].parent.glob(f"{job.id}_grid_*"))
    assert all(f.exists() for f in files) and grids
    await world.alice.click(message, custom_id=job_custom_id(job.id, "d"))
    assert all(m.id != message.id for m in world.art.history())
    assert not any(f.exists() for f in files) and not any(g.exists() for g in grids)
    after = await world.services.jobs.get(job.id)
    assert after.deleted_at is not None and after.cost == 400  # 4 credits, kept: deleting is not a refund
    assert (await world.services.quota.status(world.guild.id, world.alice.id, [])).used == 400
    for member in (world.alice, world.bob):
        refused = await member.slash(world.art, "show", job=job.id)
        assert refused.ephemeral and "was deleted" in refused.response.content
    moderator = await world.mod.slash(world.art, "show", job=job.id)
    assert "red circle" in {f.name: f.value for f in moderator.response.embeds[0].fields}["Prompt"]
    assert not moderator.response.attachments and "deleted" in moderator.response.embeds[0].description
    copy = await copy_of_buttons(world, job)
    for action in ("r", "i", "e"):
        result = await world.alice.click(copy, custom_id=job_custom_id(job.id, action))
        assert result.ephemeral and "was deleted" in result.response.content


async def test_delete_on_a_message_that_is_not_the_jobs_own_is_refused(world):
    """🗑️ on another message carrying the job's buttons deletes nothing (neither that message nor the job)."""
    await world.alice.slash(world.art, "imagine", prompt="a red circle")
    job = await world.latest_job()
    message = await world.finish(job.id)
    copy = await copy_of_buttons(world, job, world.other)
    refused = await world.alice.click(copy, custom_id=job_custom_id(job.id, "d"))
    assert refused.ephemeral and "not the result" in refused.response.content
    assert any(m.id == copy.id for m in world.other.history()) and any(m.id == message.id for m in world.art.history())
    assert (await world.services.jobs.get(job.id)).deleted_at is None


async def test_show_of_a_single_image_strips_the_prompt_for_others(world):
    """/show of a one-image job sends others the PNG without its `parameters` chunk; its owner gets it whole."""
    await world.alice.slash(world.art, "imagine", prompt="a red circle", count=1)
    job = await world.latest_job()
    await finish_with_metadata(world, job.id)
    by_bob = await world.bob.slash(world.art, "show", job=job.id)
    by_alice = await world.alice.slash(world.art, "show", job=job.id)
    bob_png = await by_bob.response.attachments[0].read()
    alice_png = await by_alice.response.attachments[0].read()
    assert "parameters" not in Image.open(io.BytesIO(bob_png)).text and b"red circle" not in bob_png
    assert "red circle" in Image.open(io.BytesIO(alice_png)).text["parameters"]


async def test_blocked_term_in_the_negative_prompt_is_refused(world):
    """A blocked term in `negative` is refused like one in the prompt (same matching), by the command and by the ✏️
    modal, and nothing is charged."""
    await world.services.moderation.add_blocked_term(world.guild.id, "gore", by=world.mod.id)
    refused = await world.alice.slash(world.art, "imagine", prompt="a red circle", negative="G O R E, blurry")
    assert refused.ephemeral and "negative prompt contains a blocked term" in refused.response.content
    assert (await world.services.quota.status(world.guild.id, world.alice.id, [])).used == 0
    await world.alice.slash(world.art, "imagine", prompt="a red circle", count=1)
    job = await world.latest_job()
    message = await world.finish(job.id)
    used = (await world.services.quota.status(world.guild.id, world.alice.id, [])).used
    published = list(world.dispatcher.published)
    shown = await world.alice.click(message, custom_id=job_custom_id(job.id, "e"))
    result = await world.alice.submit_modal(shown, {"prompt": "a blue square", "negative": "Gore"})
    assert result.ephemeral and "negative prompt contains a blocked term" in result.response.content
    assert world.dispatcher.published == published and not await world.services.jobs.queue()
    assert (await world.services.quota.status(world.guild.id, world.alice.id, [])).used == used
