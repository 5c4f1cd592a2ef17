"""The /imagine command: declared, validated options; the work happens in `flow.start_job`.

The options a member leaves out take the defaults of the target model's card (bot.exts.imagine.models says which
model a job targets); the size autocomplete offers the sizes of the model chosen in `model` if one is typed already,
else of the model the job would get.
"""

from __future__ import annotations

import logging
from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.errors import InvalidRequest
from bot.exts.common import deps, is_moderator
from bot.exts.imagine import models
from bot.exts.imagine.flow import start_job
from bot.exts.imagine.options import ASPECTS, SCHEDULER_NAMES, aspect_size, clean_prompt, parse_size, size_suggestions
from bot.exts.imagine.presenter import JobPresenter
from bot.ui.text import CHOICE_NAME, plain_text
from generation.protocol.cards import ModelCard
from generation.protocol.contract import MAX_GUIDANCE, MAX_PROMPT_CHARS, MAX_SEED, MAX_STEPS, SCHEDULERS

log = logging.getLogger(__name__)

MAX_COUNT = 4
#: Longest model name (a card's name has at most 80 characters).
MAX_MODEL_CHARS = 80


class Imagine(commands.Cog):
    def __init__(self, bot: commands.Bot):
        self.bot = bot
        self.presenter = JobPresenter(bot)

    async def cog_load(self) -> None:
        self.bot.presenter = self.presenter  # type: ignore[attr-defined]

    async def cog_unload(self) -> None:
        if getattr(self.bot, "presenter", None) is self.presenter:
            self.bot.presenter = None  # type: ignore[attr-defined]

    @app_commands.command(name="imagine", description="Draw four images from a text prompt.")
    @app_commands.describe(
        prompt="What to draw",
        negative="What to keep out of the image",
        seed="Repeat a result: the same seed and options give the same images",
        steps="Denoising steps: more is finer but slower",
        guidance="How closely to follow the prompt (0-30; about 7 is usual)",
        aspect="Shape of the image",
        size="Exact size as WIDTHxHEIGHT, e.g. 512x768 (instead of aspect)",
        scheduler="The sampler that removes the noise",
        count="How many images (1-4)",
        timeline="Also post an animation of the denoising",
        model="The model that draws it (left out: the server's default)",
    )
    @app_commands.choices(
        aspect=[app_commands.Choice(name=a, value=a) for a in ASPECTS],
        scheduler=[app_commands.Choice(name=SCHEDULER_NAMES.get(s, s), value=s) for s in SCHEDULERS],
    )
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
        count: app_commands.Range[int, 1, MAX_COUNT] = 4,
        timeline: bool = False,
        model: app_commands.Range[str, 1, MAX_MODEL_CHARS] | None = None,
    ) -> None:
        if aspect and size:
            raise InvalidRequest("Give either `aspect` or `size`, not both.", "size")
        sized = parse_size(size) if size else None
        given = {
            "prompt": clean_prompt(prompt),
            "negative_prompt": clean_prompt(negative, "negative", required=False),
            "seed": seed,
            "num_images": count,
            "timeline": timeline,
        }

        def build(card: ModelCard) -> dict[str, Any]:
            """The parameters that depend on the target model: what the member gave, else the card's defaults."""
            defaults = card.defaults()
            if sized is not None:
                width, height = sized
            elif aspect:
                width, height = aspect_size(aspect, card)
            else:
                width, height = defaults["width"], defaults["height"]
            return {
                "steps": steps if steps is not None else defaults["steps"],
                "guidance": guidance if guidance is not None else defaults["guidance"],
                "width": width,
                "height": height,
                "scheduler": scheduler or defaults["scheduler"],
            }

        await start_job(interaction, build=build, model=model, **given)

    @imagine.autocomplete("model")
    async def model_autocomplete(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        return await models.model_choices(interaction, current)

    @imagine.autocomplete("size")
    async def size_autocomplete(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        d = deps(interaction)
        served = await d.dispatcher.served_models()
        policy = await d.model_policy.policy(interaction.guild_id or 0)
        chosen = getattr(interaction.namespace, "model", None)
        target = None
        if isinstance(chosen, str) and chosen:
            target = models.find(models.offered(served, policy, moderator=is_moderator(interaction)), chosen)
        target = target or models.automatic(served, policy)
        if target is None:
            return []
        card = target.card
        try:
            limits = await d.quota.effective_limits(interaction.guild_id or 0, interaction.user.id, [])
            max_side = min(limits.max_side, card.max_side)
        except Exception:
            max_side = card.max_side
        return [app_commands.Choice(name=plain_text(s, CHOICE_NAME), value=s) for s in size_suggestions(current, card, max_side)]
