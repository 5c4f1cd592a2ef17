"""/imagine scheduler: the samplers of the target model's card, labelled as members know them (A1111's labels), the
id sent and stored; a sampler the card does not list is refused before anything is charged, naming those it does;
the job's messages and ℹ️ show the label; old jobs keep their sampler.

The stand-in dispatcher plays the workers' announcements: `world.dispatcher.cards` are the models served now."""

from __future__ import annotations

from bot.ui.buttons import job_custom_id
from tests.bot.exts.conftest import card

#: A model whose card offers three samplers, DPM++ 2M Karras by default.
NARROW = card("narrow", schedulers=("euler_a", "dpmpp_2m_karras", "dpmpp_2m_sde_karras"),
              default_scheduler="dpmpp_2m_karras")
#: An LCM model as its worker announces it: LCM alone, 4 steps, no guidance.
FAST = card("fast", schedulers=("lcm",), default_scheduler="lcm", default_steps=4, default_guidance=1.0)
#: A model with every sampler (the card's default).
WIDE = card("wide")


async def jobs(world) -> list:
    return await world.services.jobs.queue()


async def used(world, member) -> int:
    return (await world.services.quota.status(world.guild.id, member.id, [])).used


async def test_the_suggestions_are_the_target_models_samplers_with_their_labels(world):
    """Only the card's samplers, its default first and marked; the label is shown and the id is sent."""
    world.dispatcher.cards = [NARROW]
    choices = await world.alice.autocomplete(world.art, "imagine", "scheduler", "")
    assert [(c["name"], c["value"]) for c in choices] == [
        ("DPM++ 2M Karras (default)", "dpmpp_2m_karras"),
        ("Euler a", "euler_a"),
        ("DPM++ 2M SDE Karras", "dpmpp_2m_sde_karras"),
    ]
    typed = await world.alice.autocomplete(world.art, "imagine", "scheduler", "sde")
    assert [c["value"] for c in typed] == ["dpmpp_2m_sde_karras"]


async def test_the_suggestions_follow_the_model_typed(world):
    """With several models served, the samplers are those of the model chosen in `model`, else of the default."""
    world.dispatcher.cards = [NARROW, FAST, WIDE]
    fast = await world.alice.autocomplete(world.art, "imagine", "scheduler", "", model="fast")
    assert [(c["name"], c["value"]) for c in fast] == [("LCM (default)", "lcm")]
    wide = await world.alice.autocomplete(world.art, "imagine", "scheduler", "", model="wide")
    assert wide[0] == {"name": "DPM++ 2M (default)", "value": "dpmpp_2m"}
    assert {c["name"] for c in wide} >= {"Euler a", "DPM++ SDE Karras", "UniPC", "Heun", "DDIM", "LCM", "PNDM"}
    automatic = await world.alice.autocomplete(world.art, "imagine", "scheduler", "", model="nobody")
    assert [c["value"] for c in automatic] == ["lcm"]  # `fast` comes first by name


async def test_a_sampler_the_card_lists_is_stored_by_id_and_shown_by_label(world):
    """The id (what the autocomplete sends) or the label typed out both store the id; the queued message and ℹ️
    show the label."""
    world.dispatcher.cards = [NARROW]
    result = await world.alice.slash(world.art, "imagine", prompt="a red circle", scheduler="dpmpp_2m_sde_karras")
    job = await world.latest_job()
    assert not result.ephemeral and job.scheduler == "dpmpp_2m_sde_karras"
    assert "DPM++ 2M SDE Karras" in result.response.embeds[0].fields[0].value
    await world.alice.slash(world.art, "imagine", prompt="a blue circle", scheduler="euler A")
    assert (await world.latest_job()).scheduler == "euler_a"
    message = await world.finish(job.id)
    info = await world.bob.click(message, custom_id=job_custom_id(job.id, "i"))
    fields = {f.name: f.value for f in info.response.embeds[0].fields}
    assert fields["Sampler"] == "DPM++ 2M SDE Karras"


async def test_a_job_without_a_sampler_gets_the_cards_default(world):
    world.dispatcher.cards = [FAST]
    await world.alice.slash(world.art, "imagine", prompt="x")
    job = await world.latest_job()
    assert (job.scheduler, job.steps, job.guidance) == ("lcm", 4, 1.0)


async def test_a_sampler_the_card_does_not_list_is_refused_naming_those_it_does(world):
    """`card.check` refuses it privately before anything is queued or charged, with the card's labels; so is text
    that names no sampler at all."""
    world.dispatcher.cards = [NARROW]
    for given in ("ddim", "DPM++ SDE Karras", "warp drive"):
        result = await world.alice.slash(world.art, "imagine", prompt="x", scheduler=given)
        assert result.ephemeral, given
        assert "narrow runs with Euler a, DPM++ 2M Karras, DPM++ 2M SDE Karras" in result.response.content, given
    assert await jobs(world) == [] and await used(world, world.alice) == 0 and world.dispatcher.published == []


async def test_an_old_pndm_job_rerolls_where_its_model_still_runs_pndm(world):
    """Jobs stored with `pndm` keep reading and 🔄 runs them again on a model that lists it; once the model no longer
    does, 🔄 is refused naming the samplers it runs with."""
    world.dispatcher.cards = [WIDE]
    await world.alice.slash(world.art, "imagine", prompt="a red circle", scheduler="pndm")
    job = await world.latest_job()
    message = await world.finish(job.id)
    await world.alice.click(message, custom_id=job_custom_id(job.id, "r"))
    again = await world.latest_job()
    assert again.id != job.id and again.scheduler == "pndm"
    world.dispatcher.cards = [card("wide", schedulers=NARROW.schedulers, default_scheduler="euler_a")]
    refused = await world.alice.click(message, custom_id=job_custom_id(job.id, "r"))
    assert refused.ephemeral and "wide runs with Euler a, DPM++ 2M Karras" in refused.response.content
