"""/quota, /history, /show and /help."""

from __future__ import annotations


async def test_quota_shows_usage_and_reset_time(world):
    """After one /imagine (a grid at the defaults: 4 credits), /quota shows the credits left and when the window
    resets."""
    await world.alice.slash(world.art, "imagine", prompt="a red circle")
    result = await world.alice.slash(world.art, "quota")
    embed = result.response.embeds[0]
    assert result.ephemeral and "**36** of **40** fast credits" in embed.description and "<t:" in embed.description


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


async def test_help_says_which_prompt_syntax_the_default_model_reads(world):
    """/help names the A1111 syntax for an SD-family model (the shapes model) and says a Flux model reads only the
    words."""
    from bot.exts.account.cog import describe_model
    from tests.bot.exts.conftest import card

    result = await world.alice.slash(world.art, "help")
    about = {f.name: f.value for f in result.response.embeds[0].fields}["What the default model knows"]
    assert "`(word:1.3)`" in about and "`BREAK`" in about and "long prompts are read whole" in about
    assert "Prompt syntax" in describe_model(card("xl", architecture="sdxl"))
    flux = describe_model(card("flux", architecture="flux"))
    assert "Prompt syntax" not in flux and "reads the words without them" in flux


async def test_help_explains_starting_from_an_image_and_the_edit_buttons_within_discords_limits(world):
    """One compact field names /describe, the two message menus, `image:`/`strength:`/`hires:` and the edit buttons;
    with many models served the embed still fits Discord's limits (a field at most 1024 characters, 6000 in all)."""
    from tests.bot.exts.conftest import card

    world.dispatcher.cards = [card(f"model-{i:02d}-" + "x" * 60, description="d" * 300) for i in range(30)]
    result = await world.alice.slash(world.art, "help")
    embed = result.response.embeds[0]
    fields = {f.name: f.value for f in embed.fields}
    text = fields["From an image"]
    for words in ("/describe", "Describe this image", "Imagine from this image", "image:`", "`strength:`",
                  "`hires:`", "Vary (Region)", "Zoom Out", "Pan", "Make square", "Upscale"):
        assert words in text, words
    assert len(text) <= 1024 and all(len(f.value) <= 1024 for f in embed.fields)
    assert len(embed) <= 6000 and len(embed.fields) <= 25


async def test_help_names_the_community_commands_and_moderators_see_theirs(world):
    member = {f.name: f.value for f in (await world.alice.slash(world.art, "help")).response.embeds[0].fields}
    for words in ("`/settings`", "`/style save", "credits", "relax"):
        assert words in member["Your account"], words
    assert "`style`" in member["Options"] and "`{a, b}`" in member["Options"]
    assert "Moderators" not in member
    mod = {f.name: f.value for f in (await world.mod.slash(world.art, "help")).response.embeds[0].fields}
    for words in ("`/mod style`", "`/mod channel-defaults`", "`/mod showcase`", "`/mod gallery`"):
        assert words in mod["Moderators"], words
