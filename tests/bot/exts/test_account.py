"""/quota, /history, /show and /help."""

from __future__ import annotations


async def test_quota_shows_usage_and_reset_time(world):
    """After one /imagine, /quota shows the images left and when the window resets."""
    await world.alice.slash(world.art, "imagine", prompt="a red circle")
    result = await world.alice.slash(world.art, "quota")
    embed = result.response.embeds[0]
    assert result.ephemeral and "**36** of **40**" in embed.description and "<t:" in embed.description


async def test_history_lists_own_jobs_only(world):
    """/history lists the member's jobs, not other members'."""
    await world.alice.slash(world.art, "imagine", prompt="alice prompt")
    await world.bob.slash(world.art, "imagine", prompt="bob prompt")
    result = await world.alice.slash(world.art, "history")
    text = result.response.embeds[0].description
    assert "alice prompt" in text and "bob prompt" not in text


async def test_show_gives_parameters_and_the_images(world):
    """/show job:<id> shows the parameters with the grid attached."""
    await world.alice.slash(world.art, "imagine", prompt="a red circle")
    job = await world.latest_job()
    await world.finish(job.id)
    result = await world.alice.slash(world.art, "show", job=job.id)
    assert result.ephemeral
    assert {f.name: f.value for f in result.response.embeds[0].fields}["Seed"] == str(job.seed)
    assert result.response.attachments[0].filename == f"job{job.id}.png"


async def test_show_unknown_job_is_a_friendly_error(world):
    """/show of a job that does not exist says so."""
    result = await world.alice.slash(world.art, "show", job=999)
    assert result.ephemeral and "#999 does not exist" in result.response.content


async def test_help_describes_what_the_model_knows(world):
    """/help includes the model card's description and vocabulary."""
    result = await world.alice.slash(world.art, "help")
    fields = {f.name: f.value for f in result.response.embeds[0].fields}
    assert "Flat shapes" in fields["What the default model knows"] and "circle" in fields["What the default model knows"]


async def test_history_links_posted_results(world):
    """A posted job in /history links to its result message."""
    await world.alice.slash(world.art, "imagine", prompt="a red circle")
    job = await world.latest_job()
    posted = await world.finish(job.id)
    result = await world.alice.slash(world.art, "history")
    assert f"/{world.art.id}/{posted.id})" in result.response.embeds[0].description
