"""Models from the workers' cards: /imagine model:, its autocomplete, hidden and default models, refusals that charge
nothing, options from the target model's card, /mod model …, /help, and "loading model…" on the progress message.

The stand-in dispatcher plays the workers' announcements: `world.dispatcher.cards` are the models served now."""

from __future__ import annotations

from bot.ui.buttons import job_custom_id
from tests.bot.exts.conftest import SHAPES, card

ALPHA = card("alpha", description="Photoreal portraits, sharp. Trained on faces.", min_side=256, max_side=768,
             default_width=512, default_height=512, default_steps=20, default_guidance=6.0,
             default_scheduler="euler_a", example_prompts=("a portrait of an old sailor",),
             knows={"styles": ("photo", "film")})
BETA = card("beta", description="Watercolour landscapes", min_side=64, max_side=128, default_width=64,
            default_height=64, default_steps=6, default_guidance=3.0)
TURBO = card("turbo", description="Few-step distilled model", guidance="none", negative_prompt=False, max_side=512,
             default_steps=2, default_guidance=0.0)


async def used(world, member) -> int:
    return (await world.services.quota.status(world.guild.id, member.id, [])).used


async def jobs(world) -> list:
    return await world.services.jobs.queue()


async def actions(world) -> list[str]:
    return [e.action for e in await world.services.audit.recent(world.guild.id)]


# --- which model a job targets -----------------------------------------------------------------------------------
async def test_the_model_option_targets_that_model_and_its_card_fills_the_defaults(world):
    """model:alpha queues a job stored with model `alpha` and alpha's default size, steps, guidance and sampler."""
    world.dispatcher.cards = [ALPHA, BETA]
    result = await world.alice.slash(world.art, "imagine", prompt="a sailor", model="alpha")
    job = await world.latest_job()
    assert not result.ephemeral and world.dispatcher.published == [job.id]
    assert (job.model, job.width, job.height, job.steps, job.guidance, job.scheduler) == (
        "alpha", 512, 512, 20, 6.0, "euler_a")
    assert "alpha" in result.response.embeds[0].fields[0].value  # the parameters line names the model


async def test_a_model_name_in_any_case_finds_the_served_model_and_stores_its_own_name(world):
    world.dispatcher.cards = [ALPHA, BETA]
    await world.alice.slash(world.art, "imagine", prompt="x", model="BETA")
    assert (await world.latest_job()).model == "beta"


async def test_with_one_served_model_a_job_naming_none_gets_it(world):
    """The default world serves one model: a plain /imagine stores its name, and its card's defaults."""
    await world.alice.slash(world.art, "imagine", prompt="a red circle")
    job = await world.latest_job()
    assert (job.model, job.width, job.steps) == ("shapes", 64, 4)


async def test_with_several_models_and_no_default_a_job_gets_the_first_by_name(world):
    world.dispatcher.cards = [BETA, SHAPES, ALPHA]
    await world.alice.slash(world.art, "imagine", prompt="x")
    assert (await world.latest_job()).model == "alpha"


async def test_the_servers_default_model_is_used_when_a_member_names_none(world):
    """/mod model default beta: plain jobs go to beta, with beta's defaults; the change is audited."""
    world.dispatcher.cards = [ALPHA, BETA]
    result = await world.mod.slash(world.art, "mod model default", name="beta")
    assert result.ephemeral and "beta" in result.response.content
    await world.alice.slash(world.art, "imagine", prompt="x")
    job = await world.latest_job()
    assert (job.model, job.width, job.steps, job.guidance) == ("beta", 64, 6, 3.0)
    assert "model.default" in await actions(world)
    assert (await world.services.model_policy.policy(world.guild.id)).default_model == "beta"
    await world.mod.slash(world.art, "mod model default")  # cleared: automatic again
    await world.alice.slash(world.art, "imagine", prompt="y")
    assert (await world.latest_job()).model == "alpha"


async def test_a_model_no_worker_serves_is_refused_privately_naming_the_served_ones(world):
    world.dispatcher.cards = [ALPHA, BETA]
    result = await world.alice.slash(world.art, "imagine", prompt="x", model="gamma")
    assert result.ephemeral
    assert "No worker serves the model `gamma`" in result.response.content
    assert "`alpha`, `beta`" in result.response.content and "Nothing was charged" in result.response.content
    assert world.dispatcher.published == [] and await jobs(world) == [] and await used(world, world.alice) == 0


async def test_with_no_worker_running_every_job_is_refused_saying_so(world):
    world.dispatcher.cards = []
    result = await world.alice.slash(world.art, "imagine", prompt="x")
    assert result.ephemeral and "No image worker is running" in result.response.content
    assert await jobs(world) == [] and await used(world, world.alice) == 0


async def test_a_default_model_that_is_not_served_refuses_plain_jobs_naming_the_others(world):
    world.dispatcher.cards = [ALPHA, BETA]
    await world.mod.slash(world.art, "mod model default", name="beta")
    world.dispatcher.cards = [ALPHA]
    result = await world.alice.slash(world.art, "imagine", prompt="x")
    assert result.ephemeral and "default model `beta` is not served" in result.response.content
    assert "`alpha`" in result.response.content and await jobs(world) == []
    await world.alice.slash(world.art, "imagine", prompt="x", model="alpha")  # naming one still works
    assert (await world.latest_job()).model == "alpha"


# --- options against the target model's card --------------------------------------------------------------------
async def test_a_size_outside_the_models_range_is_refused_privately_with_nothing_charged(world):
    """size:512x512 on a 64-128 model: refused before anything is queued, naming the model's range."""
    world.dispatcher.cards = [BETA]
    result = await world.alice.slash(world.art, "imagine", prompt="x", size="512x512")
    assert result.ephemeral and "beta takes sides from 64 to 128 px" in result.response.content
    assert await jobs(world) == [] and await used(world, world.alice) == 0 and world.dispatcher.published == []


async def test_steps_and_sampler_outside_the_card_are_refused(world):
    narrow = card("narrow", max_steps=10, default_steps=8, schedulers=("euler", "ddim"), default_scheduler="euler")
    world.dispatcher.cards = [narrow]
    steps = await world.alice.slash(world.art, "imagine", prompt="x", steps=30)
    sampler = await world.alice.slash(world.art, "imagine", prompt="x", scheduler="dpmpp_2m")
    assert steps.ephemeral and "narrow takes at most 10 steps" in steps.response.content
    assert sampler.ephemeral and "narrow runs with Euler, DDIM" in sampler.response.content
    assert await jobs(world) == [] and await used(world, world.alice) == 0


async def test_an_aspect_keeps_to_the_models_sides(world):
    """aspect:16:9 on a 256-768 model with a 512x512 default gives a wide size within 256-768."""
    world.dispatcher.cards = [ALPHA]
    await world.alice.slash(world.art, "imagine", prompt="x", aspect="16:9", count=1)
    job = await world.latest_job()
    assert job.width > job.height >= 256 and job.width <= 768 and job.width % 8 == 0


async def test_a_negative_prompt_on_a_model_without_one_is_refused(world):
    world.dispatcher.cards = [TURBO]
    result = await world.alice.slash(world.art, "imagine", prompt="x", negative="blurry")
    assert result.ephemeral and "`turbo` takes no negative prompt" in result.response.content
    assert await jobs(world) == [] and await used(world, world.alice) == 0
    await world.alice.slash(world.art, "imagine", prompt="x")
    assert (await world.latest_job()).model == "turbo"


# --- the autocompletes -----------------------------------------------------------------------------------------------
async def test_model_autocomplete_offers_the_served_models_with_a_short_description(world):
    world.dispatcher.cards = [ALPHA, BETA]
    world.dispatcher.busy = {"alpha"}
    world.dispatcher.waiting = {"alpha": 3}
    choices = await world.alice.autocomplete(world.art, "imagine", "model", "")
    assert [c["value"] for c in choices] == ["alpha", "beta"]
    assert choices[0]["name"] == "alpha — Photoreal portraits, 512 px · 3 waiting"
    assert choices[1]["name"] == "beta — Watercolour landscapes, 64 px"
    assert [c["value"] for c in await world.alice.autocomplete(world.art, "imagine", "model", "ET")] == ["beta"]


async def test_a_busy_model_without_a_queue_is_marked_busy(world):
    world.dispatcher.cards = [ALPHA]
    world.dispatcher.busy = {"alpha"}
    (choice,) = await world.alice.autocomplete(world.art, "imagine", "model", "")
    assert choice["name"].endswith("· busy")


async def test_size_autocomplete_follows_the_model_typed_or_the_default(world):
    """Sizes of the model already chosen in `model`, else of the model a plain job gets."""
    world.dispatcher.cards = [ALPHA, BETA]
    default = await world.alice.autocomplete(world.art, "imagine", "size", "")
    chosen = await world.alice.autocomplete(world.art, "imagine", "size", "", model="beta")
    assert default[0]["value"] == "512x512" and all(256 <= int(v) <= 768 for c in default for v in c["value"].split("x"))
    assert chosen[0]["value"] == "64x64" and all(64 <= int(v) <= 128 for c in chosen for v in c["value"].split("x"))


# --- hidden models -----------------------------------------------------------------------------------------------
async def test_a_hidden_model_is_not_offered_to_members_and_refused_if_forced(world):
    world.dispatcher.cards = [ALPHA, BETA]
    result = await world.mod.slash(world.art, "mod model hide", name="alpha")
    assert result.ephemeral and "`alpha` is hidden" in result.response.content
    assert [c["value"] for c in await world.alice.autocomplete(world.art, "imagine", "model", "")] == ["beta"]
    mod_choices = await world.mod.autocomplete(world.art, "imagine", "model", "")
    assert [c["value"] for c in mod_choices] == ["alpha", "beta"] and "hidden" in mod_choices[0]["name"]
    forced = await world.alice.slash(world.art, "imagine", prompt="x", model="alpha")
    assert forced.ephemeral and "`alpha` is not offered in this server" in forced.response.content
    assert "`beta`" in forced.response.content and await jobs(world) == [] and await used(world, world.alice) == 0
    await world.alice.slash(world.art, "imagine", prompt="x")  # a plain job skips the hidden model
    assert (await world.latest_job()).model == "beta"
    await world.mod.slash(world.art, "mod model show", name="alpha")
    await world.alice.slash(world.art, "imagine", prompt="y", model="alpha")
    assert (await world.latest_job()).model == "alpha"
    assert {"model.hide", "model.show"} <= set(await actions(world))


async def test_moderators_may_use_a_hidden_model(world):
    world.dispatcher.cards = [ALPHA, BETA]
    await world.mod.slash(world.art, "mod model hide", name="alpha")
    result = await world.mod.slash(world.art, "imagine", prompt="x", model="alpha")
    assert not result.ephemeral and (await world.latest_job()).model == "alpha"


async def test_the_default_cannot_be_hidden_nor_a_hidden_model_made_default(world):
    world.dispatcher.cards = [ALPHA, BETA]
    await world.mod.slash(world.art, "mod model default", name="alpha")
    hide = await world.mod.slash(world.art, "mod model hide", name="alpha")
    assert hide.ephemeral and "default model" in hide.response.content
    await world.mod.slash(world.art, "mod model hide", name="beta")
    default = await world.mod.slash(world.art, "mod model default", name="beta")
    assert default.ephemeral and "hidden" in default.response.content
    policy = await world.services.model_policy.policy(world.guild.id)
    assert policy.default_model == "alpha" and [h.name for h in policy.hidden] == ["beta"]


async def test_every_served_model_hidden_leaves_members_nothing(world):
    world.dispatcher.cards = [ALPHA]
    await world.mod.slash(world.art, "mod model hide", name="alpha")
    result = await world.alice.slash(world.art, "imagine", prompt="x")
    assert result.ephemeral and "No model is offered" in result.response.content


# --- /mod model ------------------------------------------------------------------------------------------------------
async def test_mod_model_default_refuses_a_model_nobody_serves(world):
    world.dispatcher.cards = [ALPHA, BETA]
    result = await world.mod.slash(world.art, "mod model default", name="gamma")
    assert result.ephemeral and "it has to be a model served now: alpha, beta" in result.response.content
    assert (await world.services.model_policy.policy(world.guild.id)).default_model is None


async def test_mod_model_list_shows_state_default_and_hidden_marks(world):
    world.dispatcher.cards = [ALPHA, BETA, SHAPES]
    world.dispatcher.waiting = {"beta": 2}
    await world.mod.slash(world.art, "mod model default", name="shapes")
    await world.mod.slash(world.art, "mod model hide", name="alpha")
    await world.mod.slash(world.art, "mod model hide", name="retired")
    result = await world.mod.slash(world.art, "mod model list")
    text = result.response.embeds[0].description
    assert result.ephemeral
    lines = text.splitlines()
    assert lines[0].startswith("**alpha**") and "256–768 px" in lines[0] and "hidden" in lines[0]
    assert lines[1].startswith("**beta**") and "2 waiting" in lines[1]
    assert lines[2].startswith("**shapes**") and "default" in lines[2] and "1 worker" in lines[2]
    assert "**retired** · hidden · not served now" in text


async def test_mod_model_list_asks_for_a_default_when_several_are_served(world):
    world.dispatcher.cards = [ALPHA, BETA]
    text = (await world.mod.slash(world.art, "mod model list")).response.embeds[0].description
    assert "No default model is set" in text and "**alpha**, the first by name" in text
    world.dispatcher.cards = []
    text = (await world.mod.slash(world.art, "mod model list")).response.embeds[0].description
    assert "No worker is running" in text


async def test_mod_model_commands_are_for_moderators_only(world):
    synced = await world.bot.tree.fetch_commands()
    mod = next(c for c in synced if c.name == "mod")
    world.guild.set_command_permissions(mod.id, {world.alice: True})
    result = await world.alice.slash(world.art, "mod model hide", name="shapes")
    assert result.ephemeral and "moderators" in result.response.content.lower()
    assert (await world.services.model_policy.policy(world.guild.id)).hidden == ()


async def test_mod_model_show_autocompletes_the_hidden_models(world):
    await world.mod.slash(world.art, "mod model hide", name="retired")
    choices = await world.mod.autocomplete(world.art, "mod model show", "name", "ret")
    assert [c["value"] for c in choices] == ["retired"]


# --- the buttons reuse the job's model ------------------------------------------------------------------------------
async def posted(world, **options):
    await world.alice.slash(world.art, "imagine", prompt="a red circle", **options)
    job = await world.latest_job()
    return job, await world.finish(job.id)


async def test_buttons_run_the_jobs_own_model_again(world):
    """Reroll, variation and upscale of a beta job are beta jobs, though plain jobs now go to alpha."""
    world.dispatcher.cards = [ALPHA, BETA]
    job, message = await posted(world, model="beta")
    for action, index in (("r", None), ("vs", 0), ("u", 1)):
        await world.alice.click(message, custom_id=job_custom_id(job.id, action, index))
        new = await world.latest_job()
        assert new.model == "beta" and (new.width, new.height) == (64, 64), action
    shown = await world.alice.click(message, custom_id=job_custom_id(job.id, "e"))
    await world.alice.submit_modal(shown, {"prompt": "a blue square", "negative": ""})
    assert (await world.latest_job()).model == "beta"


async def test_a_button_of_a_job_whose_model_is_gone_is_refused_with_nothing_charged(world):
    world.dispatcher.cards = [ALPHA, BETA]
    job, message = await posted(world, model="beta")
    world.dispatcher.cards = [ALPHA]
    before = await used(world, world.alice)
    result = await world.alice.click(message, custom_id=job_custom_id(job.id, "r"))
    assert result.ephemeral and "No worker serves the model `beta`" in result.response.content
    assert await used(world, world.alice) == before and [j.id for j in await jobs(world)] == []


# --- /help -----------------------------------------------------------------------------------------------------------
async def test_help_shows_the_target_models_card_and_the_served_models(world):
    world.dispatcher.cards = [ALPHA, BETA]
    result = await world.alice.slash(world.art, "help")
    fields = {f.name: f.value for f in result.response.embeds[0].fields}
    about = fields["What the default model knows"]
    assert "**alpha** — Photoreal portraits, sharp. Trained on faces." in about
    assert "**styles**: photo, film" in about and "`a portrait of an old sailor`" in about
    assert "512×512 px" in about and "256–768 px" in about and "20 steps (at most 150)" in about
    served = fields["Models served now"]
    assert "`alpha` — Photoreal portraits, 512 px" in served and "`beta` — Watercolour landscapes, 64 px" in served
    assert "Moderators" not in fields


async def test_help_follows_the_servers_default_and_tells_moderators_to_set_one(world):
    world.dispatcher.cards = [ALPHA, BETA]
    mod_fields = {f.name: f.value for f in (await world.mod.slash(world.art, "help")).response.embeds[0].fields}
    assert "No default model is set" in mod_fields["Moderators"] and "`/mod model default`" in mod_fields["Moderators"]
    await world.mod.slash(world.art, "mod model default", name="beta")
    fields = {f.name: f.value for f in (await world.alice.slash(world.art, "help")).response.embeds[0].fields}
    assert fields["What the default model knows"].startswith("**beta**")


async def test_help_without_a_worker_says_so(world):
    world.dispatcher.cards = []
    fields = {f.name: f.value for f in (await world.alice.slash(world.art, "help")).response.embeds[0].fields}
    assert "No image worker is running" in fields["What the default model knows"]
    assert "Models served now" not in fields


# --- loading model… --------------------------------------------------------------------------------------------------
async def test_the_progress_message_says_loading_model_until_the_first_step(world):
    await world.alice.slash(world.art, "imagine", prompt="a red circle")
    job = await world.latest_job()
    await world.bot.presenter.job_loading(job.id)
    await world.env.settle()
    assert "Loading model" in world.last().embeds[0].description and "`shapes`" in world.last().embeds[0].description
    await world.services.jobs.start(job.id, worker="test")
    await world.bot.presenter.job_progress(job.id, 0, 4)  # the worker's `started`: still loading
    await world.env.settle()
    assert "Loading model" in world.last().embeds[0].description
    await world.bot.presenter.job_progress(job.id, 1, 4)
    await world.env.settle()
    assert "step 1/4" in world.last().embeds[0].description
