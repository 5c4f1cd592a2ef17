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
#: Vary (Region): opens the region menu (`RegionSelect`) of a single-image result.
VARY_REGION = "vr"
#: Zoom Out / Pan / Make square of a single-image result; the index is the kind's place in `OUTPAINTS`.
OUTPAINT = "o"
#: /describe's result: draw suggestion n with /imagine.
PROMPT = "p"
#: Upscale a single-image result again; the index is the factor (2 or 4).
UPSCALE_MORE = "m"
ACTIONS = (UPSCALE, VARY_SUBTLE, VARY_STRONG, REROLL, REMIX, INFO, DELETE, CANCEL, VARY_REGION, OUTPAINT, PROMPT,
           UPSCALE_MORE)
INDEXED = (UPSCALE, VARY_SUBTLE, VARY_STRONG, OUTPAINT, PROMPT, UPSCALE_MORE)
#: The outpaint buttons of a single-image result, in order: (kind, label, emoji).
OUTPAINT_BUTTONS = (("zoom_2", "Zoom Out 2x", "🔍"), ("zoom_1.5", "Zoom Out 1.5x", "🔍"), ("pan_left", None, "⬅️"),
                    ("pan_right", None, "➡️"), ("pan_up", None, "⬆️"), ("pan_down", None, "⬇️"),
                    ("square", "Make square", "🔳"))

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
    template=r"job:(?P<job_id>[0-9]{1,19}):(?P<action>u|vs|vS|vr|o|p|m|r|e|i|d|x)(?::(?P<index>[0-9]))?",
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


def single_view(job_id: int, size: tuple[int, int] | None = None, *, edits: bool = False,
                upscales: tuple[int, ...] = ()) -> discord.ui.View:
    """Buttons under one upscaled (or edited) image: vary it subtly or strongly, parameters, delete; with `edits`
    (the model can redraw part of an image) Vary (Region), Zoom Out 2x / 1.5x, Pan ⬅ ➡ ⬆ ⬇ and, for a non-square
    image of `size`, Make square; an Upscale button for each factor of `upscales` (those that stay in limits)."""
    from generation.protocol.regions import OUTPAINTS

    view = discord.ui.View(timeout=None)
    view.add_item(JobButton(job_id, VARY_SUBTLE, 0, label="Vary (subtle)", row=0))
    view.add_item(JobButton(job_id, VARY_STRONG, 0, label="Vary (strong)", row=0))
    if edits:
        view.add_item(JobButton(job_id, VARY_REGION, label="Vary (Region)", emoji="🖌️", row=0))
    view.add_item(JobButton(job_id, REMIX, emoji="✏️", row=0))
    if edits:
        for kind, label, emoji in OUTPAINT_BUTTONS:
            if kind == "square" and (size is None or size[0] == size[1]):
                continue
            row = 1 if kind.startswith("zoom") or kind == "square" else 2
            view.add_item(JobButton(job_id, OUTPAINT, OUTPAINTS.index(kind), label=label, emoji=emoji, row=row))
    for factor in upscales:
        view.add_item(JobButton(job_id, UPSCALE_MORE, factor, label=f"Upscale {factor}x", row=1 if edits else 0))
    view.add_item(JobButton(job_id, INFO, emoji="ℹ️", row=3))
    view.add_item(JobButton(job_id, DELETE, emoji="🗑️", row=3))
    return view


class RegionSelect(discord.ui.DynamicItem[discord.ui.Select], template=r"region:(?P<job_id>[0-9]{1,19})"):
    """The region menu of Vary (Region) (sent ephemerally by the 🖌️ button): the member picks what to redraw from
    `REGION_CHOICES`; the choice goes to the bot's `job_actions.region_chosen` (a prompt modal, then the job)."""

    def __init__(self, job_id: int) -> None:
        from generation.protocol.regions import REGION_CHOICES

        options = [discord.SelectOption(label=label, value=value) for value, label in REGION_CHOICES][:25]
        super().__init__(discord.ui.Select(custom_id=f"region:{job_id}", placeholder="The part to redraw",
                                           min_values=1, max_values=1, options=options))
        self.job_id = job_id

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Select, match: re.Match[str],
                             /) -> RegionSelect:
        return cls(int(match["job_id"]))

    async def callback(self, interaction: discord.Interaction) -> Any:
        handler = getattr(interaction.client, "job_actions", None)
        values = list((interaction.data or {}).get("values") or [])
        if handler is None:
            await interaction.response.send_message("This menu is not available right now; please try again later.",
                                                    ephemeral=True)
            return
        await handler.region_chosen(interaction, self.job_id, values[0] if values else "")


def region_view(job_id: int) -> discord.ui.View:
    """The ephemeral message of Vary (Region): the region menu."""
    view = discord.ui.View(timeout=None)
    view.add_item(RegionSelect(job_id))
    return view


#: custom_id of the Vary (Region) prompt modal: `vr:<job_id>:<region>` (the region in its canonical spelling).
REGION_MODAL = re.compile(r"vr:(?P<job_id>[0-9]{1,19}):(?P<region>[a-z0-9:,+-]{1,80})")


class RegionModal(discord.ui.Modal):
    """Vary (Region)'s prompt, to edit before the region is redrawn; handled by bot/exts/buttons from its custom_id
    (`REGION_MODAL`), so one opened before a restart still works."""

    def __init__(self, job_id: int, region: str, label: str, prompt: str) -> None:
        from bot.ui.text import MODAL_TITLE, TEXT_INPUT_VALUE, plain_text

        super().__init__(title=plain_text(f"Redraw: {label}", MODAL_TITLE), custom_id=f"vr:{job_id}:{region}",
                         timeout=None)
        self.prompt = discord.ui.TextInput(
            label="Prompt", style=discord.TextStyle.paragraph, custom_id="prompt",
            default=plain_text(prompt, TEXT_INPUT_VALUE, single_line=False), max_length=1500, required=True)
        self.add_item(self.prompt)

    async def on_submit(self, interaction: discord.Interaction) -> None:
        self.stop()


def describe_view(job_id: int, count: int) -> discord.ui.View:
    """Buttons under /describe's suggestions: 1–n draw suggestion n with /imagine; parameters, delete."""
    view = discord.ui.View(timeout=None)
    for i in range(max(0, min(4, count))):
        view.add_item(JobButton(job_id, PROMPT, i, label=str(i + 1), emoji="🎨", row=0))
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
