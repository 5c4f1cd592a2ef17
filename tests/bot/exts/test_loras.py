"""LoRAs and embeddings on the bot's side, from the workers' cards: `<lora:NAME:WEIGHT>` in the prompt and the
`lora:` option of /imagine (with its autocomplete of the target model's LoRAs), refusals before anything is queued or
charged (unknown LoRA, one made for another architecture, a weight out of range), the LoRAs in ℹ️, and /help."""

from __future__ import annotations

from bot.ui.buttons import job_custom_id
from generation.protocol.cards import LoraInfo
from tests.bot.exts.conftest import card

INK = LoraInfo("ink", "sd1", 151_000_000, ("inky", "ink wash"))
PASTEL = LoraInfo("Pastel Dream", "sd1", 37_000_000)
#: An SD 1.x model with two LoRAs and an embedding; an SDXL model with its own LoRA.
SD15 = card("sd15", min_side=64, max_side=512, default_width=64, default_height=64, default_steps=4,
            loras=(INK, PASTEL), embeddings=("easyneg", "shinystyle"))
SDXL = card("sdxl", architecture="sdxl", min_side=64, max_side=1024, default_width=64, default_height=64,
            default_steps=4, loras=(LoraInfo("pixelxl", "sdxl"),))


async def used(world, member) -> int:
    return (await world.services.quota.status(world.guild.id, member.id, [])).used


async def nothing_happened(world) -> bool:
    return (world.dispatcher.published == [] and await world.services.jobs.queue() == []
            and await used(world, world.alice) == 0)


# --- queued with its LoRAs -----------------------------------------------------------------------------------------
async def test_a_prompt_with_lora_tags_is_queued_as_typed(world):
    """The job keeps its tags (the worker applies them and the PNG shows them as typed); ℹ️ lists the LoRAs with
    their weights."""
    world.dispatcher.cards = [SD15]
    result = await world.alice.slash(world.art, "imagine", prompt="a cat <lora:ink:0.8> <lora:pastel dream>")
    job = await world.latest_job()
    assert not result.ephemeral and world.dispatcher.published == [job.id]
    assert job.prompt == "a cat <lora:ink:0.8> <lora:pastel dream>" and job.model == "sd15"
    message = await world.finish(job.id)
    info = await world.bob.click(message, custom_id=job_custom_id(job.id, "i"))
    fields = {f.name: f.value for f in info.response.embeds[0].fields}
    assert info.ephemeral and fields["LoRAs"] == "ink 0.8 · pastel dream 1"
    plain = await world.alice.slash(world.art, "imagine", prompt="a dog")
    shown = await world.alice.slash(world.art, "show", job=(await world.latest_job()).id)
    assert not plain.ephemeral and "LoRAs" not in {f.name for f in shown.response.embeds[0].fields}


async def test_the_lora_option_appends_the_tag(world):
    """`lora:ink` adds `<lora:ink>`, `lora:ink:0.6` `<lora:ink:0.6>`; the card checks it like a typed tag."""
    world.dispatcher.cards = [SD15]
    await world.alice.slash(world.art, "imagine", prompt="a cat", lora="ink")
    assert (await world.latest_job()).prompt == "a cat <lora:ink>"
    await world.alice.slash(world.art, "imagine", prompt="a cat <lora:ink:0.3>", lora="Pastel Dream:0.6")
    assert (await world.latest_job()).prompt == "a cat <lora:ink:0.3> <lora:Pastel Dream:0.6>"


# --- refused privately, nothing charged ----------------------------------------------------------------------------
async def test_an_unknown_lora_is_refused_privately_naming_the_models_loras(world):
    world.dispatcher.cards = [SD15, SDXL]
    result = await world.alice.slash(world.art, "imagine", prompt="a cat <lora:nope:0.5>", model="sd15")
    assert result.ephemeral
    assert "`sd15` has no LoRA named `nope`; its LoRAs are `ink`, `Pastel Dream`." in result.response.content
    assert await nothing_happened(world)
    option = await world.alice.slash(world.art, "imagine", prompt="a cat", lora="pixelxl", model="sd15")
    assert option.ephemeral and "`sd15` has no LoRA named `pixelxl`" in option.response.content
    assert await nothing_happened(world)


async def test_a_lora_for_another_architecture_is_refused_privately(world):
    """A card that lists an SDXL LoRA on an SD 1.x model (a worker of another version): the bot refuses it."""
    mixed = card("sd15", loras=(INK, LoraInfo("pixelxl", "sdxl")))
    world.dispatcher.cards = [mixed]
    result = await world.alice.slash(world.art, "imagine", prompt="a cat <lora:pixelxl:0.7>")
    assert result.ephemeral
    assert ("`pixelxl` is a LoRA for SDXL models, but `sd15` is an SD 1.x model; use a LoRA made for SD 1.x"
            in result.response.content)
    assert await nothing_happened(world)


async def test_a_weight_out_of_range_is_refused_privately(world):
    world.dispatcher.cards = [SD15]
    typed = await world.alice.slash(world.art, "imagine", prompt="a cat <lora:ink:3>")
    assert typed.ephemeral and "`<lora:ink:3>` has weight 3, but it has to be from -2 to 2." in typed.response.content
    option = await world.alice.slash(world.art, "imagine", prompt="a cat", lora="ink:-2.5")
    assert option.ephemeral and "has weight -2.5, but it has to be from -2 to 2" in option.response.content
    negative = await world.alice.slash(world.art, "imagine", prompt="a cat", negative="<lora:ink>")
    assert negative.ephemeral and "LoRAs apply from the prompt only" in negative.response.content
    assert await nothing_happened(world)


# --- the autocomplete and /help --------------------------------------------------------------------------------------
async def test_the_lora_autocomplete_offers_the_target_models_loras(world):
    """The LoRAs of the model typed in `model` (else of the model a plain job gets), filtered by what was typed;
    a weight typed after `:` is kept in the value."""
    world.dispatcher.cards = [SD15, SDXL]
    default = await world.alice.autocomplete(world.art, "imagine", "lora", "")
    assert [c["value"] for c in default] == ["ink", "Pastel Dream"]  # sd15: first by name
    assert default[0]["name"] == "ink — trigger: inky, ink wash · 151 MB"
    xl = await world.alice.autocomplete(world.art, "imagine", "lora", "", model="sdxl")
    assert [c["value"] for c in xl] == ["pixelxl"]
    typed = await world.alice.autocomplete(world.art, "imagine", "lora", "past:0.7")
    assert [c["value"] for c in typed] == ["Pastel Dream:0.7"]
    world.dispatcher.cards = [card("bare")]
    assert await world.alice.autocomplete(world.art, "imagine", "lora", "") == []


async def test_help_lists_the_models_loras_and_embeddings(world):
    world.dispatcher.cards = [SD15]
    fields = {f.name: f.value for f in (await world.alice.slash(world.art, "help")).response.embeds[0].fields}
    about = fields["What the default model knows"]
    assert "**LoRAs** (`<lora:name:0.8>` in the prompt, or `lora`): `ink`, `Pastel Dream`" in about
    assert "**Embeddings** (write the name in the prompt or negative prompt): `easyneg`, `shinystyle`" in about
    assert "`lora` a LoRA of the model" in fields["Options"]
