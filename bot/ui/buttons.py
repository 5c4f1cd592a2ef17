"""Buttons whose whole state is their custom_id, so they work after any restart and on messages of any age.

One `DynamicItem` class covers every job button: `job:<job_id>:<action>[:<index>]`. The callback does no work of
its own; it hands the click to the bot's `job_actions` handler (bot/exts/buttons), which reads the job from the
database. Registered once with `bot.add_dynamic_items(JobButton)` in `setup_hook`.
"""

from __future__ import annotations

import re
from typing import Any

import discord

from bot.ui.text import CUSTOM_ID

UPSCALE = "u"
VARY_SUBTLE = "vs"
VARY_STRONG = "vS"
REROLL = "r"
REMIX = "e"
INFO = "i"
DELETE = "d"
CANCEL = "x"
ACTIONS = (UPSCALE, VARY_SUBTLE, VARY_STRONG, REROLL, REMIX, INFO, DELETE, CANCEL)
INDEXED = (UPSCALE, VARY_SUBTLE, VARY_STRONG)

#: custom_id of the remix modal (a modal is not a DynamicItem; bot/exts/buttons matches this itself).
REMIX_MODAL = re.compile(r"remix:(?P<job_id>\d+)")


def job_custom_id(job_id: int, action: str, index: int | None = None) -> str:
    if action not in ACTIONS:
        raise ValueError(f"unknown job button action {action!r}")
    if (index is not None) != (action in INDEXED):
        raise ValueError(f"action {action!r} {'needs' if action in INDEXED else 'takes no'} an image index")
    custom_id = f"job:{job_id}:{action}" + (f":{index}" if index is not None else "")
    assert len(custom_id) <= CUSTOM_ID
    return custom_id


class JobButton(
    discord.ui.DynamicItem[discord.ui.Button],
    template=r"job:(?P<job_id>[0-9]{1,19}):(?P<action>u|vs|vS|r|e|i|d|x)(?::(?P<index>[0-9]))?",
):
    """One button of a job message. Only `job_id`, `action` and `index` matter; labels are for people."""

    def __init__(
        self,
        job_id: int,
        action: str,
        index: int | None = None,
        *,
        label: str | None = None,
        emoji: str | None = None,
        style: discord.ButtonStyle = discord.ButtonStyle.secondary,
        row: int | None = None,
    ) -> None:
        super().__init__(
            discord.ui.Button(label=label, emoji=emoji, style=style, row=row, custom_id=job_custom_id(job_id, action, index))
        )
        self.job_id = job_id
        self.action = action
        self.index = index

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Button, match: re.Match[str], /) -> JobButton:
        index = match["index"]
        return cls(int(match["job_id"]), match["action"], int(index) if index is not None else None)

    async def callback(self, interaction: discord.Interaction) -> Any:
        handler = getattr(interaction.client, "job_actions", None)
        if handler is None:  # the buttons extension is not loaded: say so rather than failing silently
            await interaction.response.send_message("This button is not available right now; please try again later.", ephemeral=True)
            return
        await handler.handle(interaction, self.job_id, self.action, self.index)


def grid_view(job_id: int, count: int) -> discord.ui.View:
    """Buttons under a result grid: U1–Un, V1–Vn subtle and strong, reroll, remix, parameters, delete."""
    view = discord.ui.View(timeout=None)
    count = max(1, min(4, count))
    for i in range(count):
        view.add_item(JobButton(job_id, UPSCALE, i, label=f"U{i + 1}", row=0))
    view.add_item(JobButton(job_id, REROLL, emoji="🔄", row=0))
    for i in range(count):
        view.add_item(JobButton(job_id, VARY_SUBTLE, i, label=f"V{i + 1}", row=1))
    view.add_item(JobButton(job_id, REMIX, emoji="✏️", row=1))
    for i in range(count):
        view.add_item(JobButton(job_id, VARY_STRONG, i, label=f"V{i + 1} strong", row=2))
    view.add_item(JobButton(job_id, INFO, emoji="ℹ️", row=3))
    view.add_item(JobButton(job_id, DELETE, emoji="🗑️", row=3))
    return view


def single_view(job_id: int) -> discord.ui.View:
    """Buttons under one upscaled image: vary it subtly or strongly, parameters, delete."""
    view = discord.ui.View(timeout=None)
    view.add_item(JobButton(job_id, VARY_SUBTLE, 0, label="Vary (subtle)", row=0))
    view.add_item(JobButton(job_id, VARY_STRONG, 0, label="Vary (strong)", row=0))
    view.add_item(JobButton(job_id, REMIX, emoji="✏️", row=0))
    view.add_item(JobButton(job_id, INFO, emoji="ℹ️", row=1))
    view.add_item(JobButton(job_id, DELETE, emoji="🗑️", row=1))
    return view


def progress_view(job_id: int) -> discord.ui.View:
    """The cancel button shown while a job is queued or running."""
    view = discord.ui.View(timeout=None)
    view.add_item(JobButton(job_id, CANCEL, emoji="✖", label="Cancel", style=discord.ButtonStyle.danger))
    return view


class RemixModal(discord.ui.Modal):
    """Edit the prompt (and negative prompt) of a job and run it again.

    Submissions are handled by bot/exts/buttons from the custom_id `remix:<job_id>`, not by this object, so a
    modal opened before a restart still works when it is submitted after.
    """

    def __init__(self, job_id: int, prompt: str, negative: str) -> None:
        from bot.ui.text import MODAL_TITLE, TEXT_INPUT_VALUE, plain_text

        super().__init__(title=plain_text(f"Remix job #{job_id}", MODAL_TITLE), custom_id=f"remix:{job_id}", timeout=None)
        self.prompt = discord.ui.TextInput(
            label="Prompt", style=discord.TextStyle.paragraph, custom_id="prompt", default=plain_text(prompt, TEXT_INPUT_VALUE, single_line=False), max_length=1500, required=True
        )
        self.negative = discord.ui.TextInput(
            label="Negative prompt", style=discord.TextStyle.paragraph, custom_id="negative", default=plain_text(negative, TEXT_INPUT_VALUE, single_line=False) or None, max_length=1500, required=False
        )
        self.add_item(self.prompt)
        self.add_item(self.negative)

    async def on_submit(self, interaction: discord.Interaction) -> None:
        # Answered by the listener in bot/exts/buttons (see the class docstring).
        self.stop()
