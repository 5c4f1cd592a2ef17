"""/imagine: validation, refusals, the queued message, and the posted grid."""

from __future__ import annotations

import io

from bot.ui.buttons import job_custom_id
from tests.bot.exts.conftest import png


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


async def test_banned_member_is_refused_without_charge(world):
    """A banned member gets an ephemeral refusal with the reason; nothing is reserved."""
    await world.services.moderation.ban(world.guild.id, world.alice.id, world.mod.id, reason="spam")
    result = await world.alice.slash(world.art, "imagine", prompt="a red circle")
    assert result.ephemeral and "banned" in result.response.content and "spam" in result.response.content
    assert (await world.services.quota.status(world.guild.id, world.alice.id, [])).used == 0


async def test_blocked_term_is_refused_in_any_case_or_spacing(world):
    """A prompt with a blocked term spelled with other case and spacing is refused, naming the term."""
    await world.services.moderation.add_blocked_term(world.guild.id, "gore", world.mod.id)
    result = await world.alice.slash(world.art, "imagine", prompt="lots of G O R E please")
    assert result.ephemeral and "gore" in result.response.content
    assert world.dispatcher.published == []


async def test_exhausted_quota_is_refused_and_nothing_is_charged(world):
    """With 2 credits left (and no relax lane), asking for 4 images at the defaults (4 credits) is refused with the
    reset time and usage stays as it was."""
    await world.services.quota.set_limit(world.guild.id, world.alice.id, world.mod.id, images_per_day=600,
                                         relax_per_day=0)
    await world.alice.slash(world.art, "imagine", prompt="a red circle")
    result = await world.alice.slash(world.art, "imagine", prompt="a blue circle")
    assert result.ephemeral and "2 of your 6" in result.response.content and "<t:" in result.response.content
    assert (await world.services.quota.status(world.guild.id, world.alice.id, [])).used == 400
    assert len(world.dispatcher.published) == 1


async def test_aspect_and_size_together_are_refused(world):
    """Giving both aspect and size is a friendly error."""
    result = await world.alice.slash(world.art, "imagine", prompt="x", aspect="16:9", size="64x64")
    assert result.ephemeral and "either `aspect` or `size`" in result.response.content


async def test_size_option_sets_width_and_height(world):
    """size:128x64 gives a 128×64 job; aspect:16:9 keeps about the model's pixel count."""
    await world.alice.slash(world.art, "imagine", prompt="x", size="128x64", count=1)
    sized = await world.latest_job()
    await world.alice.slash(world.art, "imagine", prompt="y", aspect="16:9", count=1)
    wide = await world.latest_job()
    assert (sized.width, sized.height) == (128, 64) and wide.width > wide.height


async def test_bad_size_names_the_rule(world):
    """A size that is not a multiple of 8 is refused with the rule."""
    result = await world.alice.slash(world.art, "imagine", prompt="x", size="100x64")
    assert result.ephemeral and "multiple of 8" in result.response.content


async def test_size_autocomplete_offers_sizes(world):
    """Typing in size offers WIDTHxHEIGHT choices starting with what was typed."""
    choices = await world.alice.autocomplete(world.art, "imagine", "size", "64")
    assert choices and all(c["value"].startswith("64") for c in choices)


async def test_everyone_in_a_prompt_pings_nobody(world):
    """A prompt with @everyone is echoed neutralised, and every message is sent with mentions switched off."""
    await world.alice.slash(world.art, "imagine", prompt="@everyone <@&123456789012345678> hi")
    job = await world.latest_job()
    posted = await world.finish(job.id)
    assert "@everyone" not in posted.embeds[0].title
    sent = [e for e in world.env.http_requests if e.method in ("POST", "PATCH") and isinstance(e.json, dict) and "allowed_mentions" in e.json]
    assert sent and all(e.json["allowed_mentions"].get("parse") == [] for e in sent)
    assert not posted.mention_everyone and not posted.role_mentions


async def test_publish_failure_fails_the_job_and_refunds(world):
    """When the queue cannot be reached the job fails, the member is told, and nothing is charged."""
    world.dispatcher.fail_publish = True
    await world.alice.slash(world.art, "imagine", prompt="a red circle")
    job = await world.latest_job() if await world.services.jobs.queue() else None
    assert job is None
    status = await world.services.quota.status(world.guild.id, world.alice.id, [])
    assert status.used == 0 and "could not be reached" in world.last().embeds[0].description


async def test_progress_edits_the_queued_message_with_a_bar_and_preview(world):
    """A progress report turns the queued message into a progress bar with the preview image."""
    await world.alice.slash(world.art, "imagine", prompt="a red circle")
    job = await world.latest_job()
    await world.services.jobs.start(job.id, worker="test")
    await world.bot.presenter.job_progress(job.id, 2, 4, png())
    await world.env.settle()
    message = world.last()
    assert "▰" in message.embeds[0].description and "2/4" in message.embeds[0].description
    assert message.attachments[0].filename == "preview.png"


async def test_failed_job_shows_the_reason(world):
    """A job the worker failed shows the reason on its message and says nothing was charged."""
    await world.alice.slash(world.art, "imagine", prompt="a red circle")
    job = await world.latest_job()
    await world.services.jobs.fail(job.id, "out of memory")
    await world.bot.presenter.job_finished(job.id)
    await world.env.settle()
    assert "out of memory" in world.last().embeds[0].description


async def test_oversized_grid_is_reencoded_to_fit_the_upload_limit(world, monkeypatch):
    """When the grid is bigger than the guild's upload limit it is posted as a smaller WebP."""
    import discord

    monkeypatch.setattr(discord.Guild, "filesize_limit", property(lambda self: 500))
    await world.alice.slash(world.art, "imagine", prompt="a red circle", size="256x256")
    job = await world.latest_job()
    posted = await world.finish(job.id, colors=[(i * 40 % 255, i * 90 % 255, 50) for i in range(4)])
    assert posted.attachments[0].filename.endswith(".webp") and posted.attachments[0].size <= 500



async def test_timeline_is_attached_next_to_the_grid(world):
    """A job that asked for a timeline gets the animation posted with its grid."""
    await world.alice.slash(world.art, "imagine", prompt="a red circle", timeline=True)
    job = await world.latest_job()
    assert job.timeline
    await world.services.jobs.start(job.id, worker="test")
    new = []
    for i in range(job.num_images):
        stored = world.services.images.save(job.id, i, png())
        new.append((i, job.seed + i, stored.path, stored.sha256))
    await world.services.jobs.succeed(job.id, new)
    await world.bot.presenter.job_finished(job.id, timeline=b"RIFF0000WEBPfake")
    await world.env.settle()
    names = [a.filename for a in world.last().attachments]
    assert names == [f"job{job.id}.png", f"job{job.id}_timeline.webp"]


async def test_queue_position_is_shown_and_refreshed(world):
    """A second member's job shows its place in line, refreshed when the dispatcher says the line moved."""
    await world.alice.slash(world.art, "imagine", prompt="first")
    result = await world.bob.slash(world.art, "imagine", prompt="second")
    assert "position 2" in result.response.embeds[0].description
    first = (await world.services.jobs.queue())[0]
    await world.services.jobs.cancel(first.id, world.alice.id)
    second = await world.latest_job()
    await world.bot.presenter.job_queued(second.id)
    await world.env.settle()
    assert "next in line" in world.last().embeds[0].description


async def test_help_lists_the_example_prompts_and_native_size(world, tmp_path):
    """/help reads the model card's example prompts and native size (the card its worker announced)."""
    from tests.bot.exts.conftest import card

    world.dispatcher.cards = [card("shapes", default_width=64, default_height=64,
                                   example_prompts=("a red circle on a white background",))]
    result = await world.alice.slash(world.art, "help")
    text = {f.name: f.value for f in result.response.embeds[0].fields}["What the default model knows"]
    assert "a red circle on a white background" in text and "64×64" in text


async def test_flagged_images_are_hidden_under_the_block_policy(world):
    """With the default block policy, images the safety checker flagged are left out of the grid and counted."""
    from PIL import Image

    await world.alice.slash(world.art, "imagine", prompt="a red circle")
    job = await world.latest_job()
    posted = await world.finish(job.id, nsfw=(1, 2))
    assert "2 image(s) were hidden" in posted.embeds[0].description
    data = await posted.attachments[0].read()
    grid = Image.open(io.BytesIO(data))
    assert grid.size == (64 * 2 + 4, 64)


async def test_flagged_images_are_shown_under_the_allow_policy(world):
    """With the allow policy every image is in the grid."""
    await world.services.moderation.set_nsfw_policy(world.guild.id, "allow", world.mod.id)
    await world.alice.slash(world.art, "imagine", prompt="a red circle")
    job = await world.latest_job()
    posted = await world.finish(job.id, nsfw=(1,))
    assert "hidden" not in posted.embeds[0].description


async def test_imagine_while_paused_queues_and_says_so(world):
    """While the moderators paused the queue, a new job waits and its message says why."""
    await world.services.moderation.pause(world.guild.id, world.mod.id)
    result = await world.alice.slash(world.art, "imagine", prompt="a red circle")
    assert "paused" in result.response.embeds[0].description


async def test_progress_goes_through_the_interaction_while_its_token_lives(world):
    """A fresh job's progress is edited through its interaction token."""
    await world.alice.slash(world.art, "imagine", prompt="a red circle")
    job = await world.latest_job()
    before = len(world.env.http_requests)
    with world.env.time_context():  # the presenter reads the same (virtual) clock as the bot
        await world.bot.presenter.job_progress(job.id, 1, 4, None)
    await world.env.settle()
    paths = [e.path for e in world.env.http_requests[before:] if e.method == "PATCH"]
    assert paths and all("/webhooks/" in p for p in paths)


async def test_progress_after_the_token_expired_goes_through_the_channel(world):
    """After 15 minutes the progress message is edited with the bot token, and the result still posts."""
    await world.alice.slash(world.art, "imagine", prompt="a red circle")
    job = await world.latest_job()
    await world.env.advance_time(16 * 60)
    before = len(world.env.http_requests)
    with world.env.time_context():
        await world.bot.presenter.job_progress(job.id, 1, 4, None)
    await world.env.settle()
    paths = [e.path for e in world.env.http_requests[before:] if e.method == "PATCH"]
    assert paths and all(p.startswith("/channels/") for p in paths)
    assert await world.finish(job.id) is not None


async def test_options_are_declared_with_their_ranges(world):
    """Discord itself refuses out-of-range options: steps, guidance and count carry declared bounds."""
    import pytest
    import simcord

    with pytest.raises(simcord.OptionError):
        await world.alice.slash(world.art, "imagine", prompt="x", steps=500)
    with pytest.raises(simcord.OptionError):
        await world.alice.slash(world.art, "imagine", prompt="x", count=9)
    assert world.dispatcher.published == []


def test_age_restricted_policy_shows_flagged_images_only_in_nsfw_channels():
    """Under age_restricted a flagged image is visible in an age-restricted channel and nowhere else."""
    from types import SimpleNamespace

    from bot.exts.imagine.presenter import nsfw_visible

    nsfw_channel = SimpleNamespace(is_nsfw=lambda: True)
    plain_channel = SimpleNamespace(is_nsfw=lambda: False)
    assert nsfw_visible("age_restricted", nsfw_channel) and not nsfw_visible("age_restricted", plain_channel)
    assert not nsfw_visible("block", nsfw_channel) and nsfw_visible("allow", plain_channel)


async def test_single_image_job_keeps_upscale_and_reroll(world):
    """A one-image job gets U1, V1 and 🔄 like a grid (only upscales get the short button set)."""
    await world.alice.slash(world.art, "imagine", prompt="a red circle", count=1)
    job = await world.latest_job()
    posted = await world.finish(job.id)
    ids = {c.custom_id for row in posted.components for c in row.children}
    assert {job_custom_id(job.id, "u", 0), job_custom_id(job.id, "vs", 0), job_custom_id(job.id, "r")} <= ids


async def test_unchanged_queue_position_costs_no_edit(world):
    """Refreshing a waiting job whose place in line did not change sends nothing to Discord."""
    await world.alice.slash(world.art, "imagine", prompt="a red circle")
    job = await world.latest_job()
    before = len(world.env.http_requests)
    with world.env.time_context():
        await world.bot.presenter.job_queued(job.id)
    await world.env.settle()
    assert [e for e in world.env.http_requests[before:] if e.method == "PATCH"] == []


async def test_repeated_preview_is_uploaded_once(world):
    """The same preview passed with later steps is not uploaded again; the embed keeps showing it."""
    await world.alice.slash(world.art, "imagine", prompt="a red circle")
    job = await world.latest_job()
    await world.services.jobs.start(job.id, worker="test")
    presenter = world.bot.presenter
    with world.env.time_context():
        await presenter.job_progress(job.id, 1, 4, png())
        presenter._last_edit.clear()
        await presenter.job_progress(job.id, 2, 4, png())
    await world.env.settle()
    edits = [e for e in world.env.http_requests if e.method == "PATCH" and isinstance(e.json, dict) and "embeds" in e.json]
    assert len(edits) == 2
    assert edits[-1].json["embeds"][0]["image"]["url"] == "attachment://preview.png"
    assert edits[0].json.get("attachments") and "attachments" not in edits[1].json


async def test_prompt_of_invisible_characters_is_refused(world):
    """A prompt of spaces, zero-width and control characters only is refused by name; nothing is queued."""
    result = await world.alice.slash(world.art, "imagine", prompt="\u200b\u200d \u3164\x00")
    assert result.ephemeral and "`prompt` has nothing to draw" in result.response.content
    assert world.dispatcher.published == []


async def test_control_characters_in_a_prompt_become_spaces(world):
    """Newlines and other control characters never reach the job's prompt."""
    await world.alice.slash(world.art, "imagine", prompt="a red\ncircle\x1b[0m")
    job = await world.latest_job()
    assert job.prompt == "a red circle [0m"


def test_declared_option_bounds_are_checked_again():
    """Values outside a command's declared type, range, length or choices are named with the rule."""
    from bot.exts.common import option_problem
    from bot.exts.imagine.cog import Imagine

    params = {p.name: p for p in Imagine.imagine.parameters}
    assert option_problem(params["count"], 3) is None
    assert "from 1 to 4" in option_problem(params["count"], 9)
    assert "a number" in option_problem(params["guidance"], float("nan"))
    assert "at most 1500" in option_problem(params["prompt"], "x" * 1501)
    assert "one of" in option_problem(params["aspect"], "5:4")
    assert option_problem(params["aspect"], "16:9") is None
    from bot.exts.account.cog import Account

    job = next(p for p in Account.show.parameters if p.name == "job")
    assert option_problem(job, 0) == "is 0, but it has to be at least 1." and option_problem(job, 2**53) is None


async def test_a_damaged_image_file_is_never_posted(world, caplog):
    """Posting reads every image with its recorded sha256: a file changed on disk after the job succeeded is not
    posted; the result goes out without its picture (its buttons still answer) and the log says why."""
    import logging

    await world.alice.slash(world.art, "imagine", prompt="a red circle")
    job = await world.latest_job()
    await world.services.jobs.start(job.id, worker="test")
    new = []
    for i in range(job.num_images):
        stored = world.services.images.save(job.id, i, png((200, 30, 30), (job.width, job.height)))
        new.append((i, job.seed + i, stored.path, stored.sha256, False))
    await world.services.jobs.succeed(job.id, new)
    world.services.images.absolute(new[2][2]).write_bytes(png((0, 0, 0), (job.width, job.height)))
    with caplog.at_level(logging.ERROR):
        posted = await world.bot.presenter.job_succeeded(job.id)
        await world.env.settle()
    assert posted is not None and not posted.attachments
    assert (await world.services.jobs.get(job.id)).status == "posted"
    assert f"job {job.id}: an image file is damaged or missing (ImageDamaged)" in caplog.text
