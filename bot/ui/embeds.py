"""Embeds of the bot. Each takes plain values (a job as the JobService returns it) and returns an embed within limits.

User text always goes through `safe_text`; every builder ends with `fit_embed`, so no embed can break Discord's
limits whatever a member typed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import discord

from bot.services.costs import format_credits
from bot.ui.progress import progress_bar
from bot.ui.text import EMBED_DESCRIPTION, EMBED_FIELD_VALUE, EMBED_TITLE, fit_embed, safe_text
from generation.protocol.contract import sampler_label
from generation.protocol.prompt import PromptSyntaxError, split_loras

BLUE = discord.Colour.blurple()
GREEN = discord.Colour.green()
RED = discord.Colour.red()
GREY = discord.Colour.light_grey()
ORANGE = discord.Colour.orange()

MODE_TITLES = {"txt2img": "", "variation": "Variation · ", "upscale": "Upscale · ", "img2img": "From an image · ",
               "inpaint": "Vary (Region) · ", "outpaint": "Outpaint · ", "describe": "Describe an image"}


def _get(job: Any, name: str, default: Any = None) -> Any:
    return getattr(job, name, default)


def ts(at: datetime | None, style: str = "R") -> str:
    """A Discord timestamp shown in each reader's own time zone."""
    return "—" if at is None else f"<t:{int(at.timestamp())}:{style}>"


def job_title(job: Any) -> str:
    prefix = MODE_TITLES.get(_get(job, "mode", "txt2img"), "")
    return safe_text(prefix + (_get(job, "prompt") or ""), EMBED_TITLE, single_line=True)


def _sampler(job: Any) -> str | None:
    """The job's sampler as members know it (`DPM++ 2M Karras`), not its stored id."""
    name = _get(job, "scheduler")
    return sampler_label(name) if name else None


def _loras(job: Any) -> str | None:
    """The LoRAs the job's prompt applies, with their weights (`ink 0.8 · pastel 1`); None when it names none."""
    try:
        refs = split_loras(_get(job, "prompt") or "")[1]
    except PromptSyntaxError:
        return None
    return safe_text(" · ".join(f"{ref.name} {ref.weight:g}" for ref in refs), EMBED_FIELD_VALUE) if refs else None


def _footer(job: Any) -> str:
    return f"Job #{_get(job, 'id')}"


def parameters_line(job: Any) -> str:
    """The parameters of a job in one short line."""
    parts = [
        _get(job, "model") or None,
        f"seed {_get(job, 'seed')}",
        f"{_get(job, 'width')}×{_get(job, 'height')}",
        f"{_get(job, 'steps')} steps",
        f"guidance {_get(job, 'guidance'):g}" if _get(job, "guidance") is not None else None,
        _sampler(job),
    ]
    if _get(job, "mode") not in (None, "txt2img") and _get(job, "source_job_id"):
        parts.append(f"from #{_get(job, 'source_job_id')} image {(_get(job, 'source_image_index') or 0) + 1}")
    return " · ".join(p for p in parts if p)


def queued_embed(job: Any, position: int | None, *, paused: bool = False) -> discord.Embed:
    """The first state of a job message: waiting in the queue."""
    where = "next in line" if position in (None, 0, 1) else f"position {position} in the queue"
    desc = f"⏳ Queued — {where}."
    if _get(job, "lane") == 1:
        desc += "\n🐢 Relax lane: runs when no fast job waits (your fast credits for today are spent)."
    cost = _get(job, "cost")
    if isinstance(cost, int) and not isinstance(cost, bool) and cost > 0:
        desc += f"\nCost: {format_credits(cost)} credit(s)."
    if paused:
        desc += "\nThe queue is paused by the moderators; your job will start when it resumes."
    embed = discord.Embed(title=job_title(job), description=desc, colour=GREY)
    embed.add_field(name="Parameters", value=safe_text(parameters_line(job), EMBED_FIELD_VALUE), inline=False)
    embed.set_footer(text=_footer(job))
    return fit_embed(embed)


def loading_embed(job: Any) -> discord.Embed:
    """A job a worker took but whose model it loads into memory first (the first job of that model there)."""
    what = f"`{safe_text(_get(job, 'model'), 100, single_line=True)}`" if _get(job, "model") else "the model"
    desc = f"⏳ Loading model… the worker loads {what} first; your job starts right after."
    embed = discord.Embed(title=job_title(job), description=desc, colour=BLUE)
    embed.add_field(name="Parameters", value=safe_text(parameters_line(job), EMBED_FIELD_VALUE), inline=False)
    embed.set_footer(text=_footer(job))
    return fit_embed(embed)


def progress_embed(job: Any, step: int, total: int, *, preview_filename: str | None = None) -> discord.Embed:
    """A job that is running: the progress bar, and the latest preview as the embed image."""
    desc = f"🎨 Generating… step {step}/{total}\n`{progress_bar(step, total)}`"
    embed = discord.Embed(title=job_title(job), description=desc, colour=BLUE)
    embed.add_field(name="Parameters", value=safe_text(parameters_line(job), EMBED_FIELD_VALUE), inline=False)
    if preview_filename:
        embed.set_image(url=f"attachment://{preview_filename}")
    embed.set_footer(text=_footer(job))
    return fit_embed(embed)


def result_embed(job: Any, user_mention: str, *, filename: str, reencoded: bool = False, hidden: int = 0) -> discord.Embed:
    """The posted result: the grid (or one image), who asked, the parameters."""
    desc = f"Requested by {user_mention}"
    if _get(job, "negative_prompt"):
        desc += "\n**Negative:** " + safe_text(_get(job, "negative_prompt"), 900, single_line=True)
    if hidden:
        desc += f"\n{hidden} image(s) were hidden by the server's content policy."
    if reencoded:
        desc += "\nThe image was re-encoded to fit this channel's upload limit."
    embed = discord.Embed(title=job_title(job), description=desc, colour=GREEN)
    embed.add_field(name="Parameters", value=safe_text(parameters_line(job), EMBED_FIELD_VALUE), inline=False)
    embed.set_image(url=f"attachment://{filename}")
    embed.set_footer(text=_footer(job))
    return fit_embed(embed)


def suggestions_embed(job: Any, user_mention: str, suggestions: Sequence[str]) -> discord.Embed:
    """/describe's result: the prompt suggestions, numbered like their buttons (the texts escaped: a caption can say
    anything, and nothing in it may ping or format)."""
    lines = [f"**{i}.** " + safe_text(text, 900, single_line=True) for i, text in enumerate(suggestions, 1)]
    desc = f"Requested by {user_mention}\n\n" + ("\n\n".join(lines) if lines else "No suggestions came back.")
    desc += "\n\nA button below draws that suggestion with /imagine."
    embed = discord.Embed(title="Prompt suggestions", description=desc, colour=GREEN)
    embed.set_footer(text=_footer(job))
    return fit_embed(embed)


def finished_progress_embed(job: Any, jump_url: str | None) -> discord.Embed:
    """The progress message once the result is posted as its own message."""
    desc = "✅ Done" + (f" — [see the result]({jump_url})" if jump_url else ".")
    embed = discord.Embed(title=job_title(job), description=desc, colour=GREEN)
    embed.set_footer(text=_footer(job))
    return fit_embed(embed)


def failed_embed(job: Any, reason: str) -> discord.Embed:
    desc = f"❌ This job failed: {safe_text(reason, 1500)}\nYour images were not charged."
    embed = discord.Embed(title=job_title(job), description=desc, colour=RED)
    embed.set_footer(text=_footer(job))
    return fit_embed(embed)


def cancelled_embed(job: Any, by_mention: str | None = None) -> discord.Embed:
    desc = "✖ Cancelled" + (f" by {by_mention}" if by_mention else "") + ". Your images were not charged."
    embed = discord.Embed(title=job_title(job), description=desc, colour=GREY)
    embed.set_footer(text=_footer(job))
    return fit_embed(embed)


def parameters_embed(job: Any) -> discord.Embed:
    """Everything needed to reproduce a job (the ℹ️ button and /show)."""
    embed = discord.Embed(title=f"Job #{_get(job, 'id')}", colour=BLUE)
    embed.add_field(name="Prompt", value=safe_text(_get(job, "prompt") or "—", EMBED_FIELD_VALUE), inline=False)
    if _get(job, "negative_prompt"):
        embed.add_field(name="Negative prompt", value=safe_text(_get(job, "negative_prompt"), EMBED_FIELD_VALUE), inline=False)
    rows = [
        ("Mode", _get(job, "mode")),
        ("Seed", _get(job, "seed")),
        ("Size", f"{_get(job, 'width')}×{_get(job, 'height')}"),
        ("Steps", _get(job, "steps")),
        ("Guidance", f"{_get(job, 'guidance'):g}" if _get(job, "guidance") is not None else None),
        ("Sampler", _sampler(job)),
        ("Images", _get(job, "num_images")),
        ("Status", _get(job, "status")),
    ]
    if _get(job, "mode") in ("variation", "img2img"):
        rows.append(("Strength", _get(job, "strength")))
    if _get(job, "mode") == "inpaint" and _get(job, "region"):
        rows.append(("Region", safe_text(_get(job, "region"), 100)))
    if _get(job, "mode") == "outpaint" and _get(job, "outpaint"):
        rows.append(("Outpaint", safe_text(_get(job, "outpaint"), 40)))
    if _get(job, "mode") == "upscale":
        rows.append(("Upscale", f"{_get(job, 'upscale_factor', 2)}x"))
    if _get(job, "hires"):
        rows.append(("Hires", f"{float(_get(job, 'hires')):g}× (drawn smaller, upscaled and refined)"))
    if _get(job, "source_job_id"):
        rows.append(("Source", f"job #{_get(job, 'source_job_id')}, image {(_get(job, 'source_image_index') or 0) + 1}"))
    if _get(job, "model"):
        rows.append(("Model", safe_text(_get(job, "model"), 200)))
    if _get(job, "style"):
        rows.append(("Style", safe_text(_get(job, "style"), 40)))
    rows.append(("LoRAs", _loras(job)))
    for name, value in rows:
        if value is not None:
            embed.add_field(name=name, value=str(value), inline=True)
    if _get(job, "created_at") is not None:
        embed.add_field(name="Created", value=ts(_get(job, "created_at")), inline=True)
    embed.set_footer(text=f"Requested by user {_get(job, 'user_id')}")
    return fit_embed(embed)


def quota_embed(status: Any, costs: Sequence[tuple[str, int]] = ()) -> discord.Embed:
    """A member's own usage (the /quota command): fast and relax credits left (the status holds units), the reset,
    and `costs`, (model, units) of a default job on each model the member may choose."""
    c = format_credits
    used = max(0, _get(status, "used", 0))
    limit = _get(status, "limit", 0)
    left = max(0, limit - used)
    desc = f"**{c(left)}** of **{c(limit)}** fast credits left today.\n`{progress_bar(min(used, limit), limit or 1)}` used"
    limits = _get(status, "limits")
    relax_limit = _get(limits, "relax_per_day", 0) if limits is not None else 0
    if relax_limit:
        relax_used = max(0, _get(status, "relax_used", 0))
        desc += (f"\n**{c(max(0, relax_limit - relax_used))}** of **{c(relax_limit)}** relax credits left: once the "
                 "fast credits cannot pay a job, it waits in the relax lane and runs when no fast job waits.")
    else:
        desc += "\nNo relax lane here: a job the fast credits cannot pay is refused."
    resets = _get(status, "resets_at")
    desc += f"\nResets {ts(resets, 'f')} ({ts(resets)})." if resets else "\nYour daily window starts with your next job."
    desc += ("\nA credit is one image at a model's default size and steps; larger images, more steps or more "
             "images cost more, in proportion.")
    embed = discord.Embed(title="Your quota", description=desc, colour=BLUE)
    embed.add_field(name="Jobs running", value=f"{_get(status, 'active', 0)} of {_get(status, 'max_concurrent', '?')}", inline=True)
    limits = _get(status, "limits")
    if limits is not None:
        embed.add_field(name="Max steps", value=str(_get(limits, "max_steps")), inline=True)
        embed.add_field(name="Max side", value=f"{_get(limits, 'max_side')} px", inline=True)
    if costs:
        lines = [f"`{safe_text(name, 60, single_line=True)}`: {c(units)} credits" for name, units in costs[:15]]
        embed.add_field(name="A default job (4 images) costs", value="\n".join(lines)[:EMBED_FIELD_VALUE],
                        inline=False)
    return fit_embed(embed)


def history_embed(jobs: Sequence[Any], *, title: str = "Your recent jobs") -> discord.Embed:
    """A short list of jobs with status and prompt."""
    if not jobs:
        return discord.Embed(title=title, description="No jobs yet. Try `/imagine`!", colour=BLUE)
    icons = {"queued": "⏳", "running": "🎨", "succeeded": "✅", "posted": "✅", "failed": "❌", "cancelled": "✖"}
    lines = []
    for job in jobs:
        label = f"**#{_get(job, 'id')}**"
        if _get(job, "posted_message_id") and _get(job, "posted_channel_id"):
            url = f"https://discord.com/channels/{_get(job, 'guild_id')}/{_get(job, 'posted_channel_id')}/{_get(job, 'posted_message_id')}"
            label = f"[{label}]({url})"
        line = f"{icons.get(str(_get(job, 'status')), '•')} {label} {ts(_get(job, 'created_at'))} — "
        line += safe_text(_get(job, "prompt") or "", 120, single_line=True)
        lines.append(line)
    embed = discord.Embed(title=title, description=safe_text("\n".join(lines), EMBED_DESCRIPTION, markdown=True), colour=BLUE)
    embed.set_footer(text="Use /show job:<id> for the details of one job.")
    return fit_embed(embed)


def lines_embed(title: str, lines: Iterable[str], *, empty: str = "Nothing here.", colour: discord.Colour = BLUE) -> discord.Embed:
    """A list embed whose lines are already safe (built with safe_text)."""
    text = "\n".join(lines) or empty
    return fit_embed(discord.Embed(title=title, description=text, colour=colour))
