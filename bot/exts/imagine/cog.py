"""The /imagine command: declared, validated options; the work happens in `flow.start_job`.

The options a member leaves out take their own defaults, else the channel's, else the server's, else the target
model's card (`bot.services.preferences.resolve`, the rule /settings shows; bot.exts.imagine.models says which
model a job targets). `{a, b}` groups in the prompt, the negative prompt or the style make one job per combination,
started after the member confirms their count and cost (bot.exts.imagine.batch); the size autocomplete offers the sizes of the model chosen in `model` if one is typed already,
else of the model the job would get. `lora` appends a `<lora:NAME:WEIGHT>` tag to the prompt (its autocomplete offers
that model's LoRAs); the card checks it like a tag the member typed, before anything is charged.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.errors import InvalidRequest
from bot.exts.common import deps
from bot.exts.describe import flow as describe_flow
from bot.exts.errors import report_error
from bot.exts.imagine import batch, models
from bot.exts.imagine.flow import SourceUpload, admission, admitting, answer_in_time
from bot.exts.imagine.options import (
    ASPECTS,
    aspect_size,
    clean_prompt,
    hires_size,
    parse_size,
    pick_sampler,
    sampler_suggestions,
    size_suggestions,
    source_size,
)
from bot.exts.imagine.presenter import JobPresenter
from bot.exts.settings.cog import gather
from bot.exts.styles.cog import MAX_STYLE_OPTION_CHARS, style_choices
from bot.services.images import SourceRefused, check_source_size, source_header
from bot.services.permutations import expand_fields
from bot.services.preferences import Source, resolve
from bot.ui.text import CHOICE_NAME, CHOICES, plain_text
from generation.protocol.cards import LoraInfo, ModelCard
from generation.protocol.contract import HIRES_FACTORS, MAX_GUIDANCE, MAX_PROMPT_CHARS, MAX_SEED, MAX_STEPS

log = logging.getLogger(__name__)

#: Longest `lora` option: a name (at most 80 characters), ':' and a weight.
MAX_LORA_OPTION_CHARS = 100


def with_lora(prompt: str, option: str | None) -> str:
    """The prompt with the `lora` option's LoRA appended as a tag: `NAME` becomes `<lora:NAME>`, `NAME:WEIGHT`
    `<lora:NAME:WEIGHT>` (a whole tag is taken as it is). The card checks the name and weight like a typed tag."""
    option = (option or "").strip()
    if not option:
        return prompt
    if not option.lower().startswith("<lora:"):
        name, _, weight = option.partition(":")
        option = f"<lora:{name.strip()}:{weight.strip()}>" if weight.strip() else f"<lora:{name.strip()}>"
    text = f"{prompt} {option}"
    if len(text) > MAX_PROMPT_CHARS:
        raise InvalidRequest(f"The prompt and the LoRA tag together are {len(text)} characters, but at most "
                             f"{MAX_PROMPT_CHARS} are allowed; shorten the prompt.", "lora")
    return text


def lora_label(info: LoraInfo) -> str:
    """One LoRA as an autocomplete choice: `ink — trigger: inky, ink wash · 144 MB`."""
    parts = [info.name]
    if info.triggers:
        parts.append(f"— trigger: {', '.join(info.triggers[:3])}")
    if info.size:
        parts.append(f"· {max(1, round(info.size / 1_000_000))} MB")
    return " ".join(parts)

MAX_COUNT = 4
#: How far `/imagine image:` moves from the image when `strength` is left out.
DEFAULT_IMAGE_STRENGTH = 0.6


async def read_source(attachment: discord.Attachment) -> SourceUpload:
    """A member's attachment as a job source: its stated size checked before it is downloaded, then its header
    (format, pixels, sides) before a pixel is decoded; `InvalidRequest` (field `image`) saying which rule it breaks."""
    try:
        check_source_size(int(attachment.size or 0))
        data = await attachment.read()
        header = source_header(data)
    except SourceRefused as exc:
        raise InvalidRequest(str(exc), "image") from None
    except discord.HTTPException as exc:
        raise InvalidRequest(f"The image could not be downloaded from Discord ({exc.status}); please try again.",
                             "image") from None
    return SourceUpload(data, header.width, header.height)

#: Longest model name (a card's name has at most 80 characters).
MAX_MODEL_CHARS = 80
#: `/imagine hires:` choices: how many times smaller the first pass draws (generation.protocol.contract.HIRES_FACTORS).
HIRES_CHOICES = [app_commands.Choice(name=f"{f:g}\u00d7", value=f) for f in HIRES_FACTORS]


def check_can_read(channel: Any, member: Any) -> None:
    """Refuse (InvalidRequest, field `image`) a member who can not view `channel` or read its message history: the
    bot reads a message there on their behalf only when they could read it themselves."""
    try:
        perms = channel.permissions_for(member)
    except (AttributeError, TypeError):
        perms = None
    if perms is None or not (perms.view_channel and perms.read_message_history):
        raise InvalidRequest("You can not read the channel that image is in (you need View Channel and Read Message "
                             "History there), so it can not be used.", "image")


class Imagine(commands.Cog):
    def __init__(self, bot: commands.Bot):
        self.bot = bot
        self.presenter = JobPresenter(bot)
        # Message context menus (they cannot be cog methods): bot.exts.describe.flow says what they do.
        self.menus = [
            app_commands.ContextMenu(name="Describe this image", callback=self.describe_message),
            app_commands.ContextMenu(name="Imagine from this image", callback=self.imagine_from_message),
        ]
        for menu in self.menus:
            menu.guild_only = True

    async def cog_load(self) -> None:
        self.bot.presenter = self.presenter  # type: ignore[attr-defined]
        for menu in self.menus:
            self.bot.tree.add_command(menu)

    async def cog_unload(self) -> None:
        if getattr(self.bot, "presenter", None) is self.presenter:
            self.bot.presenter = None  # type: ignore[attr-defined]
        for menu in self.menus:
            self.bot.tree.remove_command(menu.name, type=menu.type)

    # --- starting from an image: /describe and the message context menus --------------------------------------------
    @app_commands.command(name="describe", description="Four prompt suggestions for an image.")
    @app_commands.describe(image="The image to describe (PNG, JPEG or WebP; at most 10 MiB and 16 megapixels)")
    @app_commands.guild_only()
    async def describe(self, interaction: discord.Interaction, image: discord.Attachment) -> None:
        await describe_flow.describing_model(interaction)  # not available: said before the image is downloaded
        await describe_flow.start_describe(interaction, await read_source(image))

    async def describe_message(self, interaction: discord.Interaction, message: discord.Message) -> None:
        await describe_flow.describing_model(interaction)
        await describe_flow.start_describe(interaction, await read_source(describe_flow.image_attachment(message)))

    async def imagine_from_message(self, interaction: discord.Interaction, message: discord.Message) -> None:
        attachment = describe_flow.image_attachment(message)
        try:  # a refusal now, not after the member typed a prompt
            check_source_size(int(attachment.size or 0))
        except SourceRefused as exc:
            raise InvalidRequest(str(exc), "image") from None
        await interaction.response.send_modal(describe_flow.ImageModal(message.channel.id, message.id, attachment.id))

    @commands.Cog.listener()
    async def on_modal_submit(self, interaction: discord.Interaction) -> None:
        """The "Imagine from this image" modal, matched by custom_id (it works across a restart): the image is read
        from the message again, then checked and used like `/imagine image:`."""
        match = describe_flow.IMAGE_MODAL.fullmatch(str((interaction.data or {}).get("custom_id", "")))
        if match is None:
            return
        try:
            values = {c.get("custom_id"): c.get("value") for row in (interaction.data or {}).get("components", [])
                      for c in ([row["component"]] if "component" in row else row.get("components", []))}
            prompt = clean_prompt(values.get("prompt"))
            strength = describe_flow.parse_strength(values.get("strength"))
            channel = interaction.client.get_channel(int(match["channel_id"])) or await interaction.client.fetch_channel(
                int(match["channel_id"]))
            if getattr(channel, "guild", None) is None or channel.guild.id != interaction.guild_id:
                raise InvalidRequest("That image is not in this server.", "image")
            # The modal names the channel in its custom_id, which a client can write: the member has to be able to
            # read that channel's messages themselves, else the bot would fetch (and draw from) what they can not see.
            check_can_read(channel, interaction.user)
            message = await channel.fetch_message(int(match["message_id"]))
            attachment = next((a for a in message.attachments if a.id == int(match["attachment_id"])), None)
            if attachment is None:
                raise InvalidRequest("That image is gone from its message.", "image")
            await describe_flow.start_from_image(interaction, await read_source(attachment), prompt, strength)
        except Exception as error:  # noqa: BLE001 - the one error handler decides what the member sees
            await report_error(interaction, error)

    @app_commands.command(name="imagine", description="Draw four images from a text prompt.")
    @app_commands.describe(
        prompt="What to draw",
        negative="What to keep out of the image",
        seed="Repeat a result: the same seed and options give the same images",
        steps="Denoising steps: more is finer but slower",
        guidance="How closely to follow the prompt (0-30; about 7 is usual)",
        aspect="Shape of the image",
        size="Exact size as WIDTHxHEIGHT, e.g. 512x768 (instead of aspect)",
        scheduler="The sampler that removes the noise (the model's own by default)",
        count="How many images (1-4)",
        timeline="Also post an animation of the denoising",
        model="The model that draws it (left out: the server's default)",
        lora="A LoRA of the model to apply: NAME or NAME:WEIGHT (-2 to 2); adds <lora:NAME:WEIGHT> to the prompt",
        style="A style of the server (or yours, my:NAME): its prompt around yours, its negative and defaults",
        image="Start from this image (PNG, JPEG or WebP; at most 10 MiB and 16 megapixels)",
        strength="With `image`: how far to move from it (0 keeps it, 1 ignores it; 0.6 if left out)",
        hires="Hires fix: drawn at the usual size, upscaled 1.5x/2x and refined (with `size`: that is the result)",
    )
    @app_commands.choices(aspect=[app_commands.Choice(name=a, value=a) for a in ASPECTS], hires=HIRES_CHOICES)
    @app_commands.guild_only()
    async def imagine(
        self,
        interaction: discord.Interaction,
        prompt: app_commands.Range[str, 1, MAX_PROMPT_CHARS],
        negative: app_commands.Range[str, 0, MAX_PROMPT_CHARS] | None = None,
        seed: app_commands.Range[int, 0, MAX_SEED] | None = None,
        steps: app_commands.Range[int, 1, MAX_STEPS] | None = None,
        guidance: app_commands.Range[float, 0.0, MAX_GUIDANCE] | None = None,
        aspect: str | None = None,
        size: str | None = None,
        scheduler: str | None = None,
        count: app_commands.Range[int, 1, MAX_COUNT] | None = None,
        timeline: bool = False,
        model: app_commands.Range[str, 1, MAX_MODEL_CHARS] | None = None,
        lora: app_commands.Range[str, 1, MAX_LORA_OPTION_CHARS] | None = None,
        style: app_commands.Range[str, 1, MAX_STYLE_OPTION_CHARS] | None = None,
        image: discord.Attachment | None = None,
        strength: app_commands.Range[float, 0.0, 1.0] | None = None,
        hires: float | None = None,
    ) -> None:
        if strength is not None and image is None:
            raise InvalidRequest("`strength` says how far to move from an image: give `image` with it.", "strength")
        if aspect and size:
            raise InvalidRequest("Give either `aspect` or `size`, not both.", "size")
        sized = parse_size(size) if size else None
        source: SourceUpload | None = None

        async def plan(combo: dict[str, Any]) -> batch.Planned:
            """One job: the options, else the member's, the channel's, the server's defaults, else the card's
            (bot.services.preferences.resolve; /settings shows the same). The style goes around the prompt first:
            the checks (blocked terms, the card) see the result."""
            option = {"model": model, "style": combo["style"], "aspect": aspect, "steps": steps,
                      "guidance": guidance, "count": count}
            levels = await gather(interaction, option)
            first = resolve(levels)
            chosen = levels.style_of(first.value("style")) if first.value("style") else None
            text, negative_text, sampler = clean_prompt(combo["prompt"]), combo["negative_prompt"], scheduler
            if chosen is not None:
                text, negative_text = chosen.style.expand(text), chosen.style.negative_with(negative_text)
                sampler = scheduler or chosen.style.sampler
            # The server's default and the automatic choice are made by start_job (as before), not named here.
            requested = first.value("model") if first["model"].source is not Source.SERVER else None
            given = {
                "prompt": with_lora(clean_prompt(text), lora),
                "negative_prompt": clean_prompt(negative_text, "negative", required=False),
                "seed": seed,
                "num_images": first.value("count"),
                "timeline": timeline,
                "style": chosen.label if chosen is not None else "",
                "hires": float(hires or 0.0),
            }
            if source is not None:
                given.update(mode="img2img", strength=DEFAULT_IMAGE_STRENGTH if strength is None else strength)
            planned = batch.Planned(given, lambda card: {}, requested, source, list(first.notes),
                                    stealth=levels.member.stealth)

            def build(card: ModelCard) -> dict[str, Any]:
                """The parameters that depend on the target model: resolved again with its card (its steps limit
                and defaults); the image's own shape when there is one."""
                if hires and not card.img2img:
                    raise InvalidRequest(f"{card.name} draws from text only, so it has no hires fix (which refines an "
                                         "upscaled first pass); leave `hires` out.", "hires")
                values = resolve(replace(levels, card_of=lambda name: card))
                planned.notes[:] = values.notes
                defaults = card.defaults()
                if sized is not None:
                    width, height = sized
                elif source is not None:
                    width, height = source_size(source.width, source.height, card)
                elif values.value("aspect"):
                    width, height = aspect_size(values.value("aspect"), card)
                else:
                    width, height = defaults["width"], defaults["height"]
                if hires and sized is None:  # A1111's hires fix: the usual size drawn first, the result `hires` x it
                    width, height = hires_size(width, height, hires, card)
                return {
                    "steps": values.value("steps"),
                    "guidance": values.value("guidance"),
                    "width": width,
                    "height": height,
                    "scheduler": pick_sampler(sampler, card) if sampler else defaults["scheduler"],
                }

            planned.build = build
            return planned

        async def planned() -> list[batch.Planned]:
            nonlocal source
            # The attachment is checked (its stated size, then its header) before anything else: nothing is charged.
            source = await read_source(image) if image is not None else None
            # The defaults are read like an admission's database work: a few at a time, after the deferrals in
            # progress went out (Admission.slot); start_job takes a slot of its own afterwards. The prompt's groups
            # are expanded there too: in a burst, nothing but the deferrals runs before them.
            async with admission(interaction.client).slot():
                # `{a, b}` groups: one job per combination (bot.services.permutations); none: the one job, as typed.
                combos = expand_fields({"prompt": prompt, "negative_prompt": negative, "style": style},
                                       limit=deps(interaction).settings.permutation_max_jobs)
                return [await plan(combo) for combo in combos]

        # Everything before the first answer runs under Discord's deadline and counts as an admission, as in
        # flow.start_job: acknowledged at once when other interactions are being admitted, else after DEFER_AFTER
        # seconds of work (reading the attachment, the member's and the channel's defaults). In a burst the
        # acknowledgements must not wait behind those reads.
        # The block ends with the plans: start_job counts its own admission, up to its first answer, as before.
        async with admitting(interaction):
            plans = await answer_in_time(interaction, planned())
        if len(plans) > 1:
            await batch.ask(interaction, plans)
            return
        await plans[0].start(interaction)
        await batch.send_notes(interaction, plans[0].notes)

    @imagine.autocomplete("style")
    async def style_autocomplete(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        return await style_choices(interaction, current)

    @imagine.autocomplete("model")
    async def model_autocomplete(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        return await models.model_choices(interaction, current)

    @imagine.autocomplete("lora")
    async def lora_autocomplete(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        """The LoRAs of the model the job would target (the one typed in `model`, else the automatic one) whose name
        holds what was typed before any `:`; a weight typed after it is kept."""
        target = await models.suggested_target(interaction)
        if target is None:
            return []
        typed, _, weight = (current or "").partition(":")
        typed = typed.strip().casefold()
        weight = weight.strip()
        return [
            app_commands.Choice(name=plain_text(lora_label(info), CHOICE_NAME),
                                value=f"{info.name}:{weight}" if weight else info.name)
            for info in target.card.loras if typed in info.name.casefold()
        ][:CHOICES]

    @imagine.autocomplete("scheduler")
    async def scheduler_autocomplete(self, interaction: discord.Interaction, current: str
                                     ) -> list[app_commands.Choice[str]]:
        """The samplers of the model the job would target (the one typed in `model`, else the automatic one): its
        card's, labelled as members know them; the id is what is sent."""
        target = await models.suggested_target(interaction)
        if target is None:
            return []
        return [app_commands.Choice(name=plain_text(label, CHOICE_NAME), value=name)
                for label, name in sampler_suggestions(current, target.card)]

    @imagine.autocomplete("size")
    async def size_autocomplete(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        target = await models.suggested_target(interaction)
        if target is None:
            return []
        card = target.card
        try:
            limits = await deps(interaction).quota.effective_limits(interaction.guild_id or 0, interaction.user.id, [])
            max_side = min(limits.max_side, card.max_side)
        except Exception:
            max_side = card.max_side
        return [app_commands.Choice(name=plain_text(s, CHOICE_NAME), value=s) for s in size_suggestions(current, card, max_side)]
