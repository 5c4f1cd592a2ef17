"""What /describe and the image context menus do.

- `/describe image:` and "Describe this image" (a message's first image attachment): a `describe` job of the image
  for a served model whose card names a captioner (the member's automatic model when it has one, else the first
  offered one that does); the result lists four prompt suggestions, each with a button that draws it with /imagine
  (`bot.exts.buttons`). Where no served model describes images, the member is told /describe is not available on
  this server and nothing is charged. A describe job costs `DESCRIBE_COST` units (bot.services.costs:
  `DESCRIBE_CREDITS`, a quarter of a credit), computed by the job service like every job's cost.
- "Imagine from this image": the prompt modal (`ImageModal`, its custom_id names the message and the attachment,
  so one opened before a restart still works); its submission starts an img2img job from that image, as
  `/imagine image:` does.

The image goes through the same checks as `/imagine image:` (`bot.exts.imagine.cog.read_source`): its stated size
before it is downloaded, its header before a pixel is decoded; a refusal charges nothing.
"""

from __future__ import annotations

import re
from typing import Any

import discord

from bot.errors import InvalidRequest
from bot.exts.common import deps, guild_id_of, is_moderator
from bot.exts.imagine import models
from bot.exts.imagine.flow import SourceUpload, start_job
from bot.exts.imagine.options import source_size
from bot.services.costs import DESCRIBE_CREDITS, UNITS_PER_CREDIT
from bot.ui.text import MODAL_TITLE, plain_text
from generation.protocol.cards import ModelCard

#: Units one describe job is charged (`job_units` of a describe request, whatever the model).
DESCRIBE_COST = round(DESCRIBE_CREDITS * UNITS_PER_CREDIT)
#: Attachment types taken from a message (by content type or file name).
IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp")
_IMAGE_NAME = re.compile(r".+\.(png|jpe?g|webp)$", re.IGNORECASE)
#: custom_id of the "Imagine from this image" modal: `img2img:<channel_id>:<message_id>:<attachment_id>`.
IMAGE_MODAL = re.compile(r"img2img:(?P<channel_id>[0-9]{1,19}):(?P<message_id>[0-9]{1,19}):(?P<attachment_id>[0-9]{1,19})")


class DescribeNotAvailable(InvalidRequest):
    def __init__(self) -> None:
        super().__init__("/describe is not available on this server: none of its models has a captioner that "
                         "describes images. Nothing was charged.", "image")


def image_attachment(message: discord.Message) -> discord.Attachment:
    """The first PNG/JPEG/WebP attachment of `message`; InvalidRequest when it has none."""
    for att in message.attachments:
        if (att.content_type or "").split(";")[0] in IMAGE_TYPES or _IMAGE_NAME.fullmatch(att.filename or ""):
            return att
    raise InvalidRequest("That message has no image attachment (PNG, JPEG or WebP).", "image")


async def describing_model(interaction: discord.Interaction) -> str:
    """The served model a describe job targets: the member's automatic one when its card has a captioner, else the
    first offered one that has; `DescribeNotAvailable` when none has."""
    d = deps(interaction)
    served = await d.dispatcher.served_models()
    policy = await d.model_policy.policy(guild_id_of(interaction))
    first = models.automatic(served, policy)
    if first is not None and first.card.captioner:
        return first.name
    for model in models.offered(served, policy, moderator=is_moderator(interaction)):
        if model.card.captioner:
            return model.name
    raise DescribeNotAvailable()


def defaults_of(card: ModelCard, source: SourceUpload | None = None) -> dict[str, Any]:
    """A new job's parameters from the card's defaults (a source's aspect kept)."""
    defaults = card.defaults()
    width, height = (source_size(source.width, source.height, card) if source is not None
                     else (defaults["width"], defaults["height"]))
    return {"steps": defaults["steps"], "guidance": defaults["guidance"], "scheduler": defaults["scheduler"],
            "width": width, "height": height}


async def start_describe(interaction: discord.Interaction, source: SourceUpload) -> Any:
    model = await describing_model(interaction)
    return await start_job(interaction, build=lambda card: defaults_of(card, source), source=source, model=model,
                           prompt="", mode="describe", num_images=1, timeline=False)


async def start_from_image(interaction: discord.Interaction, source: SourceUpload, prompt: str,
                           strength: float) -> Any:
    return await start_job(interaction, build=lambda card: defaults_of(card, source), source=source, prompt=prompt,
                           mode="img2img", strength=strength, num_images=4, timeline=False)


class ImageModal(discord.ui.Modal):
    """"Imagine from this image": the prompt (and how far to move from the image). Answered by the imagine cog's
    listener from its custom_id (`IMAGE_MODAL`)."""

    def __init__(self, channel_id: int, message_id: int, attachment_id: int) -> None:
        super().__init__(title=plain_text("Imagine from this image", MODAL_TITLE),
                         custom_id=f"img2img:{channel_id}:{message_id}:{attachment_id}", timeout=None)
        self.add_item(discord.ui.TextInput(label="Prompt", style=discord.TextStyle.paragraph, custom_id="prompt",
                                           max_length=1500, required=True))
        self.add_item(discord.ui.TextInput(label="Strength (0 keeps the image, 1 ignores it)", custom_id="strength",
                                           default="0.6", max_length=4, required=False))

    async def on_submit(self, interaction: discord.Interaction) -> None:
        self.stop()


def parse_strength(text: str | None) -> float:
    """The modal's strength: a number from 0 to 1 (0.6 when left empty)."""
    text = (text or "").strip()
    if not text:
        return 0.6
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise InvalidRequest(f"`strength` is {text[:10]!r}, but it has to be a number from 0 to 1.", "strength")
    return value
