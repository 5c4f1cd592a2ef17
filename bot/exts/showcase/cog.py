"""Watches ⭐ reactions on the bot's result messages and reposts a job to the showcase channel once.

Raw reaction events are used (`on_raw_reaction_add`): they come for every message, cached or not, also after a
restart. The count is read from the message itself (fetched from Discord), not counted from events, so reactions
added while the bot was down count too. A job is reposted only when:

- the guild has a showcase (`/mod showcase`) and the message has at least its number of ⭐;
- the message is a posted, not deleted job's result (its `posted_message_id`);
- everyone may see the job: the channel it was posted in is one @everyone can view (the web gallery's rule,
  bot.gallery.server.public_channel_check: no age-restricted channel, no private thread);
- it has an image that is not flagged by the safety checker (flagged ones are never reposted).

The repost names the author with a mention that pings nobody (allowed mentions: none) and links back to the result.
`ShowcaseService.claim` (the job's row, claimed before the post) and the nonce made from the job id make it happen
once, also across restarts.
"""

from __future__ import annotations

import asyncio
import io
import logging

import discord
from discord.ext import commands

from bot.services.images import removed
from bot.services.showcase import STAR, ShowcaseService
from bot.ui.embeds import BLUE
from bot.ui.images import fit_to_limit, job_grid
from bot.ui.text import EMBED_DESCRIPTION, fit_embed, safe_text

log = logging.getLogger("bot.showcase")

NO_PINGS = discord.AllowedMentions.none()
#: Discord's answers that mean nothing was posted and retrying will not help soon (missing access, unknown channel).
REFUSED = (403, 404)


def star_count(message: discord.Message) -> int:
    return next((r.count for r in message.reactions if str(r.emoji) == STAR), 0)


def showcase_embed(job, jump_url: str, filename: str | None) -> discord.Embed:
    embed = discord.Embed(title=f"⭐ Job #{job.id}", colour=BLUE,
                          description=safe_text(job.prompt, EMBED_DESCRIPTION // 2))
    embed.add_field(name="By", value=f"<@{job.user_id}>", inline=True)
    if job.model:
        embed.add_field(name="Model", value=safe_text(job.model, 200), inline=True)
    if job.style:
        embed.add_field(name="Style", value=safe_text(job.style, 40), inline=True)
    embed.add_field(name="Original", value=f"[jump to the message]({jump_url})", inline=False)
    if filename:
        embed.set_image(url=f"attachment://{filename}")
    return fit_embed(embed)


class Showcase(commands.Cog):
    def __init__(self, bot: commands.Bot):
        self.bot = bot
        self._busy: set[int] = set()

    @property
    def service(self) -> ShowcaseService:
        return ShowcaseService(self.bot.deps.sessions)  # type: ignore[attr-defined]

    @commands.Cog.listener()
    async def on_raw_reaction_add(self, payload: discord.RawReactionActionEvent) -> None:
        if payload.guild_id is None or str(payload.emoji) != STAR:
            return
        me = self.bot.user
        if me is not None and payload.message_author_id is not None and payload.message_author_id != me.id:
            return
        try:
            await self.consider(payload.guild_id, payload.channel_id, payload.message_id)
        except Exception:
            log.exception("showcase: message %s could not be considered", payload.message_id)

    async def consider(self, guild_id: int, channel_id: int, message_id: int) -> discord.Message | None:
        """Repost the job of this message if it qualifies and was not reposted; returns the repost (or None)."""
        service = self.service
        config = await service.config(guild_id)
        if config is None:
            return None
        job_id = await service.job_of_message(guild_id, channel_id, message_id)
        if job_id is None or job_id in self._busy or await service.is_settled(job_id):
            return None
        self._busy.add(job_id)
        try:
            return await self._repost(service, config, job_id, channel_id, message_id)
        finally:
            self._busy.discard(job_id)

    async def _repost(self, service: ShowcaseService, config, job_id: int, channel_id: int,
                      message_id: int) -> discord.Message | None:
        from bot.gallery.server import public_channel_check

        if not public_channel_check(self.bot)(config.guild_id, channel_id):
            return None
        channel = self.bot.get_channel(channel_id)
        if channel is None:
            return None
        try:
            message = await channel.fetch_message(message_id)
        except (discord.NotFound, discord.Forbidden):
            return None
        if star_count(message) < config.stars:
            return None
        d = self.bot.deps  # type: ignore[attr-defined]
        job = await d.jobs.find(job_id)
        if job is None or job.deleted_at is not None or removed(job):
            return None
        shown = [i for i in job.images if not i.nsfw]
        if not shown:
            return None
        target = self.bot.get_channel(config.channel_id)
        if target is None:
            log.warning("showcase: channel %s of guild %s is gone", config.channel_id, config.guild_id)
            return None
        grid = await asyncio.to_thread(job_grid, d.images, job.id, shown)
        claim = await service.claim(job.id, config.guild_id, config.channel_id)
        if claim is None:
            return None
        limit = getattr(getattr(target, "guild", None), "filesize_limit", 10 * 1024 * 1024)
        fitted = await asyncio.to_thread(fit_to_limit, grid, f"showcase{job.id}.png", limit)
        embed = showcase_embed(job, message.jump_url, fitted.filename)
        try:
            repost = await target.send(
                f"⭐ {config.stars}+ stars for <@{job.user_id}>", embed=embed,
                file=discord.File(io.BytesIO(fitted.data), filename=fitted.filename), nonce=claim.nonce,
                allowed_mentions=NO_PINGS)
        except discord.HTTPException as e:
            if e.status in REFUSED:
                await service.release(job.id)
            log.warning("showcase: job %s was not reposted (%s %s)", job.id, e.status, e.code)
            return None
        await service.mark_posted(job.id, repost.id)
        log.info("showcase: job %s reposted as message %s in channel %s", job.id, repost.id, target.id)
        return repost
