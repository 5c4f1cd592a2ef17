"""The /imagine command: declared, validated options; the work happens in `flow.start_job`."""

from __future__ import annotations

import logging

import discord
from discord import app_commands
from discord.ext import commands

from bot.errors import InvalidRequest
from bot.exts.common import deps, deps_of, model_card
from bot.exts.imagine.flow import start_job
from bot.exts.imagine.options import (
    ASPECTS,
    SCHEDULER_NAMES,
    ModelDefaults,
    aspect_size,
    clean_prompt,
    parse_size,
    size_suggestions,
)
from bot.exts.imagine.presenter import JobPresenter
from bot.ui.text import CHOICE_NAME, plain_text
from generation.protocol.contract import MAX_GUIDANCE, MAX_PROMPT_CHARS, MAX_SEED, MAX_STEPS, SCHEDULERS

log = logging.getLogger(__name__)

MAX_COUNT = 4


class Imagine(commands.Cog):
    def __init__(self, bot: commands.Bot):
        self.bot = bot
        self.presenter = JobPresenter(bot)

    async def cog_load(self) -> None:
        self.bot.presenter = self.presenter  # type: ignore[attr-defined]

    async def cog_unload(self) -> None:
        if getattr(self.bot, "presenter", None) is self.presenter:
            self.bot.presenter = None  # type: ignore[attr-defined]

    def model_defaults(self) -> ModelDefaults:
        return ModelDefaults.from_card(model_card(deps_of(self.bot).settings.model_path))

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
    ) -> None:
        defaults = self.model_defaults()
        if aspect and size:
            raise InvalidRequest("Give either `aspect` or `size`, not both.", "size")
        if size:
            width, height = parse_size(size)
        elif aspect:
            width, height = aspect_size(aspect, defaults.width, defaults.height)
        else:
            width, height = defaults.width, defaults.height
        await start_job(
            interaction,
            prompt=clean_prompt(prompt),
            negative_prompt=clean_prompt(negative, "negative", required=False),
            seed=seed,
            steps=steps if steps is not None else defaults.steps,
            guidance=guidance if guidance is not None else defaults.guidance,
            width=width,
            height=height,
            scheduler=scheduler or defaults.scheduler,
            num_images=count,
            timeline=timeline,
        )

    @imagine.autocomplete("size")
    async def size_autocomplete(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        defaults = self.model_defaults()
        try:
            limits = await deps(interaction).quota.effective_limits(interaction.guild_id or 0, interaction.user.id, [])
            max_side = min(limits.max_side, defaults.max_side)
        except Exception:
            max_side = defaults.max_side
        return [app_commands.Choice(name=plain_text(s, CHOICE_NAME), value=s) for s in size_suggestions(current, defaults, max_side)]
