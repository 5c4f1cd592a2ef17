"""/mod: quotas, bans, blocked terms, art channels, NSFW policy, the queue, pause/resume, statistics, and which models
members get (`/mod model default|hide|show|list`; the models come from the workers, see bot.exts.imagine.models),
which jobs the web gallery leaves out (`/mod gallery hide|unhide`, bot.gallery), the server's styles (`/mod style
add|edit|remove|list`, bot.services.styles), per-role quotas (`/mod quota role-set|role-clear|role-list`: Discord
nests commands two levels deep under /mod, so `role set` is spelled `role-set`), the ⭐ showcase (`/mod showcase`) and
the defaults of /imagine in a channel (`/mod channel-defaults set|show|clear`, bot.services.preferences).

Every command is hidden from members by `default_permissions(manage_guild=True)` and checked again here
(`interaction_check`), because a server's admins can change who sees a command. A refused attempt is audited; every
action is audited by the service that performs it (or here, for the few the services do not log themselves).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import discord
from discord import app_commands
from discord.ext import commands

from bot.db.models import NsfwPolicy
from bot.errors import InvalidSetting, JobNotFound
from bot.exts.common import audit, deps, guild_id_of, is_moderator, require_moderator
from bot.exts.imagine import models
from bot.exts.imagine.options import ASPECTS
from bot.exts.settings.cog import channel_of, check_aspect
from bot.exts.styles.cog import styles_of
from bot.services.costs import format_credits
from bot.services.model_policy import check_model_name
from bot.services.preferences import FIELDS as PREFERENCE_FIELDS
from bot.services.preferences import MAX_COUNT, Defaults, PreferenceService
from bot.services.quota import credits_to_units
from bot.services.showcase import MAX_STARS, MIN_STARS, ShowcaseService
from bot.services.styles import MAX_NEGATIVE_CHARS, MAX_TEMPLATE_CHARS, StyleNotFound, check_name
from bot.ui.embeds import lines_embed, ts
from bot.ui.text import CHOICE_NAME, plain_text, safe_text
from generation.protocol.contract import MAX_GUIDANCE, MAX_STEPS, MAX_STYLE_NAME_CHARS

#: Jobs `/mod queue list` shows (the rest are counted).
QUEUE_PAGE = 30
log = logging.getLogger("bot.mod")

#: ⭐ a result needs for the showcase when a moderator names none.
DEFAULT_STARS = 5

POLICY_TEXT = {
    "block": "images flagged by the safety checker are never shown",
    "age_restricted": "flagged images are shown only in age-restricted channels",
    "allow": "flagged images are shown everywhere",
}


def defaults_text(found: Defaults) -> str:
    """A level's defaults on one line, safe to echo: `model sdxl · steps 30` (or `none`)."""
    parts = [f"{name} {safe_text(f'{value:g}' if isinstance(value, float) else str(value), 80, single_line=True)}"
             for name in PREFERENCE_FIELDS if (value := found.get(name)) is not None]
    return " · ".join(parts) or "none"


async def reply(interaction: discord.Interaction, text: str, *, embed: discord.Embed | None = None) -> None:
    await interaction.response.send_message(text, embed=embed, ephemeral=True)


@app_commands.default_permissions(manage_guild=True)
@app_commands.guild_only()
class Mod(commands.GroupCog, group_name="mod", group_description="Moderator tools for the image bot"):
    def __init__(self, bot: commands.Bot):
        self.bot = bot
        super().__init__()

    async def interaction_check(self, interaction: discord.Interaction) -> bool:  # type: ignore[override]
        if is_moderator(interaction):
            return True
        command = interaction.command.qualified_name if interaction.command else "mod"
        log.warning("user %s tried /%s without moderator rights", interaction.user.id, command)
        if interaction.guild_id is not None:
            await audit(interaction, "mod.denied", f"user:{interaction.user.id}", {"command": command})
        # An AppCommandError reaches the tree's error handler, which answers "only moderators…".
        raise app_commands.MissingPermissions(["manage_guild"])

    # --- quota ---------------------------------------------------------------------------------------------------
    quota = app_commands.Group(name="quota", description="Members' daily credits (a credit: one image at a model's "
                                                         "defaults)")

    @quota.command(name="set", description="Set a member's daily fast and relax credits and parallel jobs (empty: "
                                           "back to default)")
    @app_commands.describe(member="The member", credits_per_day="Fast credits per day (a credit: one image at a "
                           "model's defaults)", max_concurrent="Jobs at once",
                           relax_credits_per_day="Relax credits per day (0: no relax lane)")
    async def quota_set(
        self,
        interaction: discord.Interaction,
        member: discord.Member,
        credits_per_day: app_commands.Range[float, 0.0, 100000.0] | None = None,
        max_concurrent: app_commands.Range[int, 1, 100] | None = None,
        relax_credits_per_day: app_commands.Range[float, 0.0, 100000.0] | None = None,
    ) -> None:
        require_moderator(interaction)
        quota = deps(interaction).quota
        fast, relax = units_or_none(credits_per_day), units_or_none(relax_credits_per_day)
        # The operator's caps (MAX_CREDITS_PER_DAY_CAP, MAX_RELAX_CREDITS_PER_DAY_CAP, MAX_CONCURRENT_CAP): a value
        # above one is refused, naming it.
        quota.caps.check("images_per_day", fast)
        quota.caps.check("relax_per_day", relax)
        quota.caps.check("max_concurrent", max_concurrent)
        await quota.set_limit(
            guild_id_of(interaction), member.id, interaction.user.id, images_per_day=fast, max_concurrent=max_concurrent,
            relax_per_day=relax,
        )
        shown = lambda v: "default" if v is None else format_credits(v)  # noqa: E731
        await reply(interaction, f"{member.mention}: {shown(fast)} fast credits per day, {shown(relax)} relax credits "
                                 f"per day, {'default' if max_concurrent is None else max_concurrent} jobs at once.")

    @quota.command(name="grant", description="Give a member extra fast credits for today")
    @app_commands.describe(member="The member", credits="Extra credits (a credit: one image at a model's defaults)")
    async def quota_grant(self, interaction: discord.Interaction, member: discord.Member,
                          credits: app_commands.Range[float, 0.01, 100000.0]) -> None:
        require_moderator(interaction)
        units = credits_to_units(credits)
        await deps(interaction).quota.grant(guild_id_of(interaction), member.id, units, interaction.user.id)
        await reply(interaction, f"Granted {format_credits(units)} extra credit(s) to {member.mention} for today.")

    @quota.command(name="reset", description="Give a member their whole daily allowance back now")
    async def quota_reset(self, interaction: discord.Interaction, member: discord.Member) -> None:
        require_moderator(interaction)
        await deps(interaction).quota.reset(guild_id_of(interaction), member.id, interaction.user.id)
        await reply(interaction, f"{member.mention}'s usage was reset.")

    # --- bans ------------------------------------------------------------------------------------------------------
    @app_commands.command(name="ban", description="Stop a member from generating images")
    @app_commands.describe(member="The member", reason="Shown to them", days="Lift the ban after this many days (empty: never)")
    async def ban(
        self,
        interaction: discord.Interaction,
        member: discord.Member,
        reason: app_commands.Range[str, 1, 300] | None = None,
        days: app_commands.Range[int, 1, 3650] | None = None,
    ) -> None:
        require_moderator(interaction)
        until = datetime.now(UTC) + timedelta(days=min(days, 3650)) if days else None
        await deps(interaction).moderation.ban(guild_id_of(interaction), member.id, interaction.user.id, reason=reason, until=until)
        await reply(interaction, f"{member.mention} can no longer generate images" + (f" until {ts(until, 'f')}" if until else "") + ".")

    @app_commands.command(name="unban", description="Let a banned member generate images again")
    async def unban(self, interaction: discord.Interaction, member: discord.Member) -> None:
        require_moderator(interaction)
        lifted = await deps(interaction).moderation.unban(guild_id_of(interaction), member.id, interaction.user.id)
        await reply(interaction, f"{member.mention} may generate images again." if lifted else f"{member.mention} was not banned.")

    # --- blocked terms ---------------------------------------------------------------------------------------------
    terms = app_commands.Group(name="terms", description="Terms refused in prompts")

    @terms.command(name="add", description="Refuse prompts containing a term (any case or spacing; * for partial words)")
    async def terms_add(self, interaction: discord.Interaction, term: app_commands.Range[str, 1, 100]) -> None:
        require_moderator(interaction)
        norm = await deps(interaction).moderation.add_blocked_term(guild_id_of(interaction), term, interaction.user.id)
        await reply(interaction, f"Blocked `{safe_text(norm, 120)}`.")

    @terms.command(name="remove", description="Allow a blocked term again")
    async def terms_remove(self, interaction: discord.Interaction, term: app_commands.Range[str, 1, 100]) -> None:
        require_moderator(interaction)
        removed = await deps(interaction).moderation.remove_blocked_term(guild_id_of(interaction), term, interaction.user.id)
        await reply(interaction, f"Unblocked `{safe_text(term, 120)}`." if removed else f"`{safe_text(term, 120)}` was not blocked.")

    @terms_remove.autocomplete("term")
    async def _term_autocomplete(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        if not is_moderator(interaction):
            return []
        terms = await deps(interaction).moderation.blocked_terms(guild_id_of(interaction))
        return [app_commands.Choice(name=t.original[:100], value=t.original[:100]) for t in terms if current.lower() in t.original.lower()][:25]

    @terms.command(name="list", description="The blocked terms")
    async def terms_list(self, interaction: discord.Interaction) -> None:
        require_moderator(interaction)
        terms = await deps(interaction).moderation.blocked_terms(guild_id_of(interaction))
        lines = [f"`{safe_text(t.original, 100)}` (matches `{safe_text(t.term, 100)}`)" for t in terms]
        await reply(interaction, "", embed=lines_embed("Blocked terms", lines, empty="No blocked terms."))

    # --- art channels ----------------------------------------------------------------------------------------------
    channels = app_commands.Group(name="channels", description="Channels where /imagine is allowed")

    @channels.command(name="add", description="Allow /imagine in a channel")
    async def channels_add(self, interaction: discord.Interaction, channel: discord.TextChannel) -> None:
        require_moderator(interaction)
        added = await deps(interaction).moderation.add_art_channel(guild_id_of(interaction), channel.id, interaction.user.id)
        await reply(interaction, f"/imagine is now allowed in {channel.mention}." if added else f"{channel.mention} was already an art channel.")

    @channels.command(name="remove", description="Stop allowing /imagine in a channel")
    async def channels_remove(self, interaction: discord.Interaction, channel: discord.TextChannel) -> None:
        require_moderator(interaction)
        removed = await deps(interaction).moderation.remove_art_channel(guild_id_of(interaction), channel.id, interaction.user.id)
        await reply(interaction, f"{channel.mention} is no longer an art channel." if removed else f"{channel.mention} was not an art channel.")

    @channels.command(name="list", description="The art channels (none listed: everywhere)")
    async def channels_list(self, interaction: discord.Interaction) -> None:
        require_moderator(interaction)
        ids = await deps(interaction).moderation.art_channels(guild_id_of(interaction))
        await reply(interaction, "", embed=lines_embed("Art channels", [f"<#{c}>" for c in ids], empty="None: /imagine works in every channel."))

    # --- NSFW --------------------------------------------------------------------------------------------------------
    @app_commands.command(name="nsfw", description="What happens to images the safety checker flags")
    @app_commands.choices(policy=[app_commands.Choice(name=f"{p}: {t}"[:100], value=p) for p, t in POLICY_TEXT.items()])
    async def nsfw(self, interaction: discord.Interaction, policy: str) -> None:
        require_moderator(interaction)
        # The service names the allowed values if `policy` is not one of them (InvalidSetting).
        await deps(interaction).moderation.set_nsfw_policy(guild_id_of(interaction), policy, interaction.user.id)
        await reply(interaction, f"NSFW policy: **{NsfwPolicy(policy).value}** — {POLICY_TEXT[NsfwPolicy(policy).value]}.")

    # --- queue -------------------------------------------------------------------------------------------------------
    queue = app_commands.Group(name="queue", description="The job queue of this server")

    @queue.command(name="list", description="Jobs waiting or running, first served first")
    async def queue_list(self, interaction: discord.Interaction) -> None:
        require_moderator(interaction)
        # The first page of the line and a count of the rest (one indexed count): never the whole line of a big
        # backlog loaded into views.
        guild_id = guild_id_of(interaction)
        jobs = await deps(interaction).jobs.queue(guild_id, limit=QUEUE_PAGE)
        lines = [
            f"**#{j.id}** {j.status} · <@{j.user_id}> · {ts(j.created_at)} — {safe_text(j.prompt, 80, single_line=True)}" for j in jobs
        ]
        if len(jobs) >= QUEUE_PAGE:
            total = await deps(interaction).jobs.active_in_guild(guild_id)
            if total > len(jobs):
                lines.append(f"… and {total - len(jobs)} more")
        paused = await deps(interaction).moderation.is_paused(guild_id_of(interaction))
        title = "Queue" + (" (paused)" if paused else "")
        await reply(interaction, "", embed=lines_embed(title, lines, empty="The queue is empty."))

    @queue.command(name="cancel", description="Cancel a queued or running job (nothing is charged)")
    async def queue_cancel(self, interaction: discord.Interaction, job: app_commands.Range[int, 1]) -> None:
        require_moderator(interaction)
        d = deps(interaction)
        found = await d.jobs.find(job)
        if found is None or found.guild_id != guild_id_of(interaction):
            raise JobNotFound(job)
        await d.jobs.cancel(job, interaction.user.id)
        await audit(interaction, "job.cancel", f"job:{job}", {"owner": found.user_id})
        try:
            await d.dispatcher.cancel(job)
        except Exception:
            log.warning("job %s: could not tell the workers about the cancel", job, exc_info=True)
        presenter = getattr(self.bot, "presenter", None)
        if presenter is not None:
            await presenter.job_cancelled(job)
        await reply(interaction, f"Job #{job} was cancelled; its owner was not charged.")

    # --- models ------------------------------------------------------------------------------------------------------
    model_group = app_commands.Group(name="model", description="The models members can choose")

    @model_group.command(name="default", description="The model /imagine uses when a member names none (empty: automatic)")
    @app_commands.describe(name="A model served now; leave it out to go back to the automatic choice")
    async def model_default(self, interaction: discord.Interaction, name: app_commands.Range[str, 1, 80] | None = None) -> None:
        require_moderator(interaction)
        d = deps(interaction)
        guild_id = guild_id_of(interaction)
        if name is None:
            previous = await d.model_policy.set_default(guild_id, None, interaction.user.id)
            cleared = f"`{previous}` is no longer the default model. " if previous else "No default model was set. "
            await reply(interaction, cleared + "Members who name no model get the only one served, or else the first "
                        "served model by name.")
            return
        served = await d.dispatcher.served_models()
        found = models.find(served, name)
        if found is None:
            names = ", ".join(m.name for m in served)
            raise InvalidSetting("name", safe_text(name, 80, single_line=True),
                                 f"it has to be a model served now: {names}" if names else "no model is served right now")
        await d.model_policy.set_default(guild_id, found.name, interaction.user.id)
        await reply(interaction, f"`{found.name}` is now the model /imagine uses when a member names none.")

    @model_group.command(name="hide", description="Stop offering a model to members (moderators can still use it)")
    @app_commands.describe(name="The model to hide")
    async def model_hide(self, interaction: discord.Interaction, name: app_commands.Range[str, 1, 80]) -> None:
        require_moderator(interaction)
        d = deps(interaction)
        found = models.find(await d.dispatcher.served_models(), name)
        model = found.name if found is not None else check_model_name(name)
        hidden = await d.model_policy.hide(guild_id_of(interaction), model, interaction.user.id)
        note = "" if found is not None else " (no worker serves it right now)"
        await reply(interaction, f"`{model}` is hidden from members{note}." if hidden else f"`{model}` was already hidden.")

    @model_group.command(name="show", description="Offer a hidden model to members again")
    @app_commands.describe(name="The hidden model")
    async def model_show(self, interaction: discord.Interaction, name: app_commands.Range[str, 1, 80]) -> None:
        require_moderator(interaction)
        d = deps(interaction)
        model = check_model_name(name)
        shown = await d.model_policy.show(guild_id_of(interaction), model, interaction.user.id)
        await reply(interaction, f"`{model}` is offered to members again." if shown else f"`{model}` was not hidden.")

    @model_default.autocomplete("name")
    @model_hide.autocomplete("name")
    async def _model_autocomplete(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        if not is_moderator(interaction):
            return []
        return await models.model_choices(interaction, current)

    @model_show.autocomplete("name")
    async def _hidden_autocomplete(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        if not is_moderator(interaction):
            return []
        policy = await deps(interaction).model_policy.policy(guild_id_of(interaction))
        typed = (current or "").casefold().strip()
        return [app_commands.Choice(name=plain_text(h.name, CHOICE_NAME), value=h.name)
                for h in policy.hidden if typed in h.name.casefold()][:25]

    @model_group.command(name="list", description="The models served now, the default and the hidden ones")
    async def model_list(self, interaction: discord.Interaction) -> None:
        require_moderator(interaction)
        d = deps(interaction)
        served = await d.dispatcher.served_models()
        policy = await d.model_policy.policy(guild_id_of(interaction))
        lines = [] if served else ["No worker is running: no model is served."]
        for m in served:
            workers = f"{len(m.workers)} worker" + ("s" if len(m.workers) != 1 else "")
            about = ", ".join(p for p in (models.short_description(m.card), models.native_size(m.card)) if p)
            sides = f"{m.card.min_side}–{m.card.max_side} px"
            lines.append(" · ".join([f"**{m.name}** — {about}", sides, workers, *models.state_marks(m, policy)]))
        for h in policy.hidden:
            if models.find(served, h.name) is None:
                lines.append(f"**{safe_text(h.name, 80)}** · hidden · not served now")
        if policy.default_model and models.find(served, policy.default_model) is None:
            lines.append(f"The default model **{safe_text(policy.default_model, 80)}** is not served now: members who "
                         "name no model are refused until it is back or another default is set.")
        elif not policy.default_model and len(models.offered(served, policy)) > 1:
            first = models.automatic(served, policy)
            lines.append(f"No default model is set: members who name none get **{first.name if first else '?'}**, the "
                         "first by name. Set one with `/mod model default`.")
        await reply(interaction, "", embed=lines_embed("Models", lines, empty="No worker is running: no model is served."))

    # --- web gallery ---------------------------------------------------------------------------------------------
    gallery = app_commands.Group(name="gallery", description="The web gallery of posted images")

    @gallery.command(name="hide", description="Take a job out of the web gallery (its Discord message stays)")
    @app_commands.describe(job="The job number (shown in the footer of every result)")
    async def gallery_hide(self, interaction: discord.Interaction, job: app_commands.Range[int, 1]) -> None:
        require_moderator(interaction)
        from bot.gallery.catalog import GalleryCatalog

        changed = await GalleryCatalog(deps(interaction).sessions).set_hidden(
            guild_id_of(interaction), job, True, interaction.user.id)
        await reply(interaction, (f"Job #{job} is hidden from the web gallery." if changed
                                  else f"Job #{job} was already hidden from the web gallery.") + _gallery_note(interaction))

    @gallery.command(name="unhide", description="Show a hidden job in the web gallery again")
    @app_commands.describe(job="The job number")
    async def gallery_unhide(self, interaction: discord.Interaction, job: app_commands.Range[int, 1]) -> None:
        require_moderator(interaction)
        from bot.gallery.catalog import GalleryCatalog

        changed = await GalleryCatalog(deps(interaction).sessions).set_hidden(
            guild_id_of(interaction), job, False, interaction.user.id)
        settings = deps(interaction).settings
        where = f" <{settings.gallery_public_url}/job/{job}>" if settings.gallery_public_url else ""
        text = (f"Job #{job} is no longer hidden: the web gallery shows it{where} if it was posted in a channel "
                "everyone can view." if changed else f"Job #{job} was not hidden from the web gallery.")
        await reply(interaction, text + _gallery_note(interaction))

    # --- styles (bot.services.styles) ---------------------------------------------------------------------------
    style = app_commands.Group(name="style", description="The server's styles for /imagine style:")

    @style.command(name="add", description="Add a style every member can use with /imagine style:")
    @app_commands.describe(
        name="Its name: letters, digits, - or _",
        prompt="The prompt, with {prompt} where the member's prompt goes",
        negative="Added to the member's negative prompt",
        model="The model it uses when the member chooses none",
        sampler="The sampler it uses when the member chooses none",
        guidance="The guidance it uses when the member chooses none",
    )
    async def style_add(
        self,
        interaction: discord.Interaction,
        name: app_commands.Range[str, 1, MAX_STYLE_NAME_CHARS],
        prompt: app_commands.Range[str, 1, MAX_TEMPLATE_CHARS],
        negative: app_commands.Range[str, 0, MAX_NEGATIVE_CHARS] | None = None,
        model: app_commands.Range[str, 1, 80] | None = None,
        sampler: app_commands.Range[str, 1, 40] | None = None,
        guidance: app_commands.Range[float, 0.0, MAX_GUIDANCE] | None = None,
    ) -> None:
        require_moderator(interaction)
        added = await styles_of(interaction).add_server(
            guild_id_of(interaction), name, prompt, interaction.user.id, negative=negative, model=model,
            sampler=sampler, guidance=guidance)
        await reply(interaction, f"Added the style **{added.name}**: {describe_style(added)}")

    @style.command(name="edit", description="Change a server style (options left out stay as they are)")
    @app_commands.describe(name="The style", clear="An optional setting to empty")
    @app_commands.choices(clear=[app_commands.Choice(name=f, value=f)
                                 for f in ("negative", "model", "sampler", "guidance")])
    async def style_edit(
        self,
        interaction: discord.Interaction,
        name: app_commands.Range[str, 1, MAX_STYLE_NAME_CHARS],
        prompt: app_commands.Range[str, 1, MAX_TEMPLATE_CHARS] | None = None,
        negative: app_commands.Range[str, 0, MAX_NEGATIVE_CHARS] | None = None,
        model: app_commands.Range[str, 1, 80] | None = None,
        sampler: app_commands.Range[str, 1, 40] | None = None,
        guidance: app_commands.Range[float, 0.0, MAX_GUIDANCE] | None = None,
        clear: str | None = None,
    ) -> None:
        require_moderator(interaction)
        given = {"prompt": prompt, "negative": negative, "model": model, "sampler": sampler, "guidance": guidance}
        changes = {k: v for k, v in given.items() if v is not None}
        if clear:
            if clear in changes:
                raise InvalidSetting("clear", clear, f"`{clear}` can not be both given and cleared")
            changes[clear] = "" if clear == "negative" else None
        edited = await styles_of(interaction).edit_server(guild_id_of(interaction), name, interaction.user.id,
                                                          **changes)
        await reply(interaction, f"The style **{edited.name}** is now: {describe_style(edited)}")

    @style.command(name="remove", description="Remove a server style")
    async def style_remove(self, interaction: discord.Interaction,
                           name: app_commands.Range[str, 1, MAX_STYLE_NAME_CHARS]) -> None:
        require_moderator(interaction)
        removed = await styles_of(interaction).remove_server(guild_id_of(interaction), name, interaction.user.id)
        shown = safe_text(name, MAX_STYLE_NAME_CHARS, single_line=True)
        await reply(interaction, f"Removed the style **{shown}**." if removed else f"There is no style **{shown}**.")

    @style_edit.autocomplete("name")
    @style_remove.autocomplete("name")
    async def _style_autocomplete(self, interaction: discord.Interaction, current: str
                                  ) -> list[app_commands.Choice[str]]:
        if not is_moderator(interaction):
            return []
        typed = (current or "").strip().casefold()
        found = await styles_of(interaction).server_styles(guild_id_of(interaction))
        return [app_commands.Choice(name=plain_text(f"{s.name} — {s.prompt}", CHOICE_NAME), value=s.name)
                for s in found if typed in s.name][:25]

    @style.command(name="list", description="The server's styles")
    async def style_list(self, interaction: discord.Interaction) -> None:
        require_moderator(interaction)
        found = await styles_of(interaction).server_styles(guild_id_of(interaction))
        lines = [f"**{s.name}** — {describe_style(s, 150)}" for s in found]
        await reply(interaction, "", embed=lines_embed("Server styles", lines, empty="No server styles yet."))

    # --- role quotas (per-role overrides, bot.services.quota) ----------------------------------------------------
    @quota.command(name="role-set", description="Set the daily fast and relax credits and parallel jobs of members "
                                                "with a role")
    @app_commands.describe(role="The role", credits_per_day="Fast credits per day (a credit: one image at a model's "
                           "defaults)", max_concurrent="Jobs at once", max_steps="Most steps a job may ask for",
                           max_side="Largest image side in pixels",
                           relax_credits_per_day="Relax credits per day (0: no relax lane)")
    async def quota_role_set(
        self,
        interaction: discord.Interaction,
        role: discord.Role,
        credits_per_day: app_commands.Range[float, 0.0, 100000.0] | None = None,
        max_concurrent: app_commands.Range[int, 0, 100] | None = None,
        max_steps: app_commands.Range[int, 1, 150] | None = None,
        max_side: app_commands.Range[int, 64, 2048] | None = None,
        relax_credits_per_day: app_commands.Range[float, 0.0, 100000.0] | None = None,
    ) -> None:
        require_moderator(interaction)
        quota = deps(interaction).quota
        fast, relax = units_or_none(credits_per_day), units_or_none(relax_credits_per_day)
        quota.caps.check("images_per_day", fast)
        quota.caps.check("relax_per_day", relax)
        quota.caps.check("max_concurrent", max_concurrent)
        given = {"images_per_day": fast, "max_concurrent": max_concurrent, "max_steps": max_steps,
                 "max_side": max_side, "relax_per_day": relax}
        changes = {k: v for k, v in given.items() if v is not None}
        if not changes:
            raise InvalidSetting("credits_per_day", None, "give at least one limit to set (`/mod quota role-clear` "
                                 "removes a role's limits)")
        limits = await deps(interaction).moderation.set_role_limits(
            guild_id_of(interaction), role.id, interaction.user.id, **changes)
        await reply(interaction, f"{role.mention}: {_role_limits_text(limits)}.")

    @quota.command(name="role-clear", description="Remove a role's quota limits (back to the server's defaults)")
    async def quota_role_clear(self, interaction: discord.Interaction, role: discord.Role) -> None:
        require_moderator(interaction)
        cleared = await deps(interaction).moderation.clear_role_limits(guild_id_of(interaction), role.id,
                                                                       interaction.user.id)
        await reply(interaction, f"{role.mention} no longer has limits of its own." if cleared
                    else f"{role.mention} had no limits of its own.")

    @quota.command(name="role-list", description="The roles with quota limits of their own")
    async def quota_role_list(self, interaction: discord.Interaction) -> None:
        require_moderator(interaction)
        rows = await deps(interaction).moderation.role_limits(guild_id_of(interaction))
        lines = [f"<@&{r.role_id}>: {_role_limits_text(r)}" for r in rows]
        caps = deps(interaction).quota.caps
        lines.append(f"Of a member's roles, the most generous value wins; the bot's operator caps every member at "
                     f"{format_credits(caps.images_per_day)} fast credits per day, "
                     f"{format_credits(caps.relax_per_day)} relax credits per day and {caps.max_concurrent} jobs at "
                     "once.")
        await reply(interaction, "", embed=lines_embed("Role quotas", lines))

    # --- a channel's defaults for /imagine (bot.services.preferences) -------------------------------------------
    channel_defaults = app_commands.Group(name="channel-defaults",
                                          description="Defaults of /imagine in a channel (below a member's own)")

    @channel_defaults.command(name="set", description="Set defaults of /imagine in a channel (others stay as they are)")
    @app_commands.describe(channel="The channel (left out: this one)", model="Default model",
                           style="Default style (a server style)", aspect="Default shape", steps="Default steps",
                           guidance="Default guidance (0-30)", count="Default number of images (1-4)")
    @app_commands.choices(aspect=[app_commands.Choice(name=a, value=a) for a in ASPECTS])
    async def channel_defaults_set(
        self,
        interaction: discord.Interaction,
        channel: discord.TextChannel | None = None,
        model: app_commands.Range[str, 1, 80] | None = None,
        style: app_commands.Range[str, 1, MAX_STYLE_NAME_CHARS] | None = None,
        aspect: str | None = None,
        steps: app_commands.Range[int, 1, MAX_STEPS] | None = None,
        guidance: app_commands.Range[float, 0.0, MAX_GUIDANCE] | None = None,
        count: app_commands.Range[int, 1, MAX_COUNT] | None = None,
    ) -> None:
        require_moderator(interaction)
        guild_id = guild_id_of(interaction)
        target = channel.id if channel is not None else channel_of(interaction)
        check_aspect(aspect)
        if style is not None:  # a server style: a member's own would mean something else to each member
            name = check_name(style)
            if name not in {s.name for s in await styles_of(interaction).server_styles(guild_id)}:
                raise StyleNotFound(name)
            style = name
        values = {"model": model, "style": style, "aspect": aspect, "steps": steps, "guidance": guidance,
                  "count": count}
        if all(v is None for v in values.values()):
            raise InvalidSetting("channel-defaults", None, "at least one of model, style, aspect, steps, guidance, "
                                 "count")
        saved = await PreferenceService(deps(interaction).sessions).set_channel(guild_id, target, interaction.user.id,
                                                                                **values)
        await reply(interaction, f"Defaults of /imagine in <#{target}>: {defaults_text(saved)}. A member's own "
                    "defaults (/settings) and the options of a command come first.")

    @channel_defaults.command(name="show", description="The defaults of a channel (left out: every channel's)")
    @app_commands.describe(channel="The channel (left out: every channel with defaults)")
    async def channel_defaults_show(self, interaction: discord.Interaction,
                                    channel: discord.TextChannel | None = None) -> None:
        require_moderator(interaction)
        prefs = PreferenceService(deps(interaction).sessions)
        guild_id = guild_id_of(interaction)
        if channel is not None:
            found = await prefs.channel(guild_id, channel.id)
            await reply(interaction, f"<#{channel.id}>: {defaults_text(found)}.")
            return
        lines = [f"<#{cid}>: {defaults_text(d)}" for cid, d in await prefs.channels(guild_id)]
        await reply(interaction, "", embed=lines_embed("Channel defaults of /imagine", lines,
                                                       empty="No channel has defaults."))

    @channel_defaults.command(name="clear", description="Clear a channel's defaults (one, or all)")
    @app_commands.describe(channel="The channel (left out: this one)", default="Which default (left out: all)")
    @app_commands.choices(default=[app_commands.Choice(name=f, value=f) for f in PREFERENCE_FIELDS])
    async def channel_defaults_clear(self, interaction: discord.Interaction,
                                     channel: discord.TextChannel | None = None, default: str | None = None) -> None:
        require_moderator(interaction)
        target = channel.id if channel is not None else channel_of(interaction)
        cleared = await PreferenceService(deps(interaction).sessions).clear_channel(
            guild_id_of(interaction), target, interaction.user.id, default)
        what = f"the default {default}" if default else "the defaults"
        await reply(interaction, f"Cleared {what} of <#{target}>." if cleared
                    else f"<#{target}> had no {default + ' ' if default else ''}default to clear.")

    # --- the ⭐ showcase (bot.services.showcase) ------------------------------------------------------------------
    @app_commands.command(name="showcase", description="Repost results with enough ⭐ to a channel (no options: show)")
    @app_commands.describe(channel="The showcase channel", stars="⭐ reactions a result needs (default 5)",
                           off="Stop reposting")
    async def showcase(
        self,
        interaction: discord.Interaction,
        channel: discord.TextChannel | None = None,
        stars: app_commands.Range[int, MIN_STARS, MAX_STARS] | None = None,
        off: bool = False,
    ) -> None:
        require_moderator(interaction)
        service = ShowcaseService(deps(interaction).sessions)
        guild_id = guild_id_of(interaction)
        if off:
            stopped = await service.turn_off(guild_id, interaction.user.id)
            await reply(interaction, "The showcase is off." if stopped else "The showcase was off already.")
            return
        current = await service.config(guild_id)
        if channel is None and stars is None:
            await reply(interaction, "The showcase is off. Turn it on with `/mod showcase channel:#channel stars:N`."
                        if current is None else f"Results with {current.stars} ⭐ or more are reposted to "
                        f"<#{current.channel_id}>.")
            return
        if channel is None and current is None:
            raise InvalidSetting("channel", None, "the showcase has no channel yet: name one")
        target = channel.id if channel is not None else current.channel_id
        count = stars if stars is not None else (current.stars if current is not None else DEFAULT_STARS)
        config = await service.configure(guild_id, target, count, interaction.user.id)
        await reply(interaction, f"Results with {config.stars} ⭐ or more are reposted to <#{config.channel_id}> "
                    "(once each, with credit to their author), if they were posted in a channel everyone can view.")

    @app_commands.command(name="pause", description="Stop starting new jobs in this server (queued jobs wait)")
    async def pause(self, interaction: discord.Interaction) -> None:
        require_moderator(interaction)
        changed = await deps(interaction).moderation.pause(guild_id_of(interaction), interaction.user.id)
        await reply(interaction, "The queue is paused." if changed else "The queue was already paused.")

    @app_commands.command(name="resume", description="Start jobs again")
    async def resume(self, interaction: discord.Interaction) -> None:
        require_moderator(interaction)
        changed = await deps(interaction).moderation.resume(guild_id_of(interaction), interaction.user.id)
        if changed:
            await deps(interaction).dispatcher.kick()
        await reply(interaction, "The queue runs again." if changed else "The queue was not paused.")

    @app_commands.command(name="stats", description="Jobs, images and members of the last day, and the data disk")
    async def stats(self, interaction: discord.Interaction) -> None:
        require_moderator(interaction)
        s = await deps(interaction).moderation.stats(guild_id_of(interaction))
        lines = [f"**{k}**: {v}" for k, v in s.jobs_by_status.items() if v]
        lines.append(f"Images in the last 24 h: **{s.images_today}** by **{s.members_today}** member(s)")
        lines.extend(await storage_lines(deps(interaction).settings))
        await reply(interaction, "", embed=lines_embed("Image bot statistics", lines))

    @app_commands.command(name="log", description="The latest moderator actions in the audit log")
    @app_commands.describe(count="How many entries (1-25)")
    async def audit_log(self, interaction: discord.Interaction, count: app_commands.Range[int, 1, 25] = 15) -> None:
        require_moderator(interaction)
        entries = await deps(interaction).audit.recent(guild_id_of(interaction), limit=count)
        lines = [
            f"{ts(e.at)} <@{e.actor_id}> **{e.action}** {safe_text(e.target or '', 60)} "
            + safe_text(", ".join(f"{k}={v}" for k, v in e.details.items() if v is not None), 120, single_line=True)
            for e in entries
        ]
        await reply(interaction, "", embed=lines_embed("Audit log", lines, empty="No moderator actions yet."))


def units_or_none(credits: float | None) -> int | None:
    """Credits a moderator typed as ledger units (None stays None: not given)."""
    return None if credits is None else credits_to_units(credits)


def _role_limits_text(limits) -> str:
    shown = lambda v: "default" if v is None else str(v)  # noqa: E731
    credits = lambda v: "default" if v is None else format_credits(v)  # noqa: E731
    return (f"{credits(limits.images_per_day)} fast credits per day, "
            f"{credits(getattr(limits, 'relax_per_day', None))} relax credits per day, "
            f"{shown(limits.max_concurrent)} jobs at once, steps {shown(limits.max_steps)}, side {shown(limits.max_side)}")


def describe_style(style, limit: int = 300) -> str:
    from bot.exts.styles.cog import describe

    return describe(style, limit)


def _gallery_note(interaction: discord.Interaction) -> str:
    """A word when the gallery is off: the flag is kept for when GALLERY_PORT is set."""
    if deps(interaction).settings.gallery_port is None:
        return " (The web gallery is off on this bot: GALLERY_PORT is not set.)"
    return ""


async def storage_lines(settings) -> list[str]:
    """/mod stats on the bot's storage: free space of the data disk (with a warning below DISK_WARN_FREE_MB) and how
    long image files are kept (bot.services.retention)."""
    import asyncio

    from bot.services.retention import disk_space

    days = settings.image_retention_days
    lines = [f"Image files kept **{days}** day(s) after a job finishes" if days else "Image files are kept forever"]
    try:
        space = await asyncio.to_thread(disk_space, settings.data_dir, settings.disk_warn_free_mb)
    except OSError as exc:
        lines.append(f"Data disk: free space unknown ({exc.strerror or type(exc).__name__})")
    else:
        lines.append(space.describe())
    return lines
