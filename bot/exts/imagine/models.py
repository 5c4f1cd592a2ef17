"""Which model a job targets, and how the served models are shown to members and moderators.

The served models come from the workers' cards (`QueueControl.served_models()`); the bot reads no model files. A job
targets, in this order:

1. the model the member named (`/imagine model:`, or the model of the job a button reuses);
2. else the server's default model, set by the moderators (`/mod model default`);
3. else, when exactly one model is offered, that one;
4. else the first offered model by name (case-insensitive). That choice changes when workers come and go, so
   `/help` and `/mod model list` tell the moderators to set a default when several models are served.

"Offered" means served and not hidden by this server's moderators (`/mod model hide`). Members are neither offered a
hidden model nor allowed to name one; moderators see hidden models (marked) and may use them. A job always stores the
concrete name of its model (`GenerationRequest.model`), so its buttons (U, V, 🔄, ✏️) run the same model again.

Every refusal is a `ModelUnavailable` error, raised before anything is queued or charged: no model served at all, the
named model not served (listing the ones that are), hidden, or the default not served now.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import discord
from discord import app_commands

from bot.errors import DefaultModelNotServed, ModelNotOffered, ModelNotServed, NoModelOffered, NoModelServed
from bot.exts.common import deps, guild_id_of, is_moderator
from bot.services.model_policy import ModelPolicy
from bot.ui.text import CHOICE_NAME, CHOICES, plain_text
from generation.protocol.cards import ModelCard
from generation.protocol.messages import model_token

if TYPE_CHECKING:
    from bot.dispatch.registry import ServedModel

#: How much of a card's description a model choice shows.
SHORT_DESCRIPTION = 40


def find(served: list[ServedModel], name: str) -> ServedModel | None:
    """The served model called `name` (compared as queue tokens: any case, spaces or punctuation)."""
    token = model_token(name)
    return next((m for m in served if m.token == token), None)


def offered(served: list[ServedModel], policy: ModelPolicy, *, moderator: bool = False) -> list[ServedModel]:
    """The served models a member may choose (moderators: all of them, hidden ones included)."""
    return [m for m in served if moderator or not policy.is_hidden(m.name)]


def automatic(served: list[ServedModel], policy: ModelPolicy) -> ServedModel | None:
    """The model of a job that names none (rules 2-4 of the module docstring), or None when there is none to take;
    never raises (for autocompletes and /help)."""
    if policy.default_model:
        return find(served, policy.default_model)
    visible = offered(served, policy)
    return visible[0] if visible else None


def choose(served: list[ServedModel], policy: ModelPolicy, requested: str | None, *, moderator: bool = False
           ) -> ServedModel:
    """The model a job targets (module docstring), or the `ModelUnavailable` error that says why there is none."""
    if not served:
        raise NoModelServed()
    names = [m.name for m in offered(served, policy, moderator=moderator)]
    if requested:
        found = find(served, requested)
        if found is None:
            raise ModelNotServed(requested, names)
        if not moderator and policy.is_hidden(found.name):
            raise ModelNotOffered(requested, names)
        return found
    if policy.default_model:
        found = find(served, policy.default_model)
        if found is None:
            raise DefaultModelNotServed(policy.default_model, names)
        return found
    found = automatic(served, policy)
    if found is None:
        raise NoModelOffered()
    return found


async def target_model(interaction: discord.Interaction, requested: str | None,
                       served: list[ServedModel] | None = None) -> ServedModel:
    """The model a job of `interaction`'s member targets (`choose`, with the server's policy)."""
    d = deps(interaction)
    if served is None:
        served = await d.dispatcher.served_models()
    policy = await d.model_policy.policy(guild_id_of(interaction))
    return choose(served, policy, requested, moderator=is_moderator(interaction))


async def suggested_target(interaction: discord.Interaction) -> ServedModel | None:
    """For an autocomplete: the model the job being typed would target — the one typed in its `model` option when
    the member may use it, else the automatic one — or None when none is served. Never raises."""
    d = deps(interaction)
    served = await d.dispatcher.served_models()
    policy = await d.model_policy.policy(interaction.guild_id or 0)
    chosen = getattr(interaction.namespace, "model", None)
    target = None
    if isinstance(chosen, str) and chosen:
        target = find(offered(served, policy, moderator=is_moderator(interaction)), chosen)
    return target or automatic(served, policy)


# --- showing models --------------------------------------------------------------------------------------------------
def short_description(card: ModelCard, limit: int = SHORT_DESCRIPTION) -> str:
    """The first clause of the card's description, at most `limit` characters."""
    text = " ".join(card.description.split())
    first = re.split(r"(?<=[.;!?])\s|\s[—–]\s|, ", text, maxsplit=1)[0].rstrip(".;!?")
    if len(first) > limit:
        first = first[: limit - 1].rstrip() + "…"
    return first


def native_size(card: ModelCard) -> str:
    w, h = card.default_width, card.default_height
    return f"{w} px" if w == h else f"{w}×{h} px"


def state_marks(model: ServedModel, policy: ModelPolicy) -> list[str]:
    """What a list shows after a model: default, hidden, busy, jobs waiting."""
    marks = []
    if policy.is_default(model.name):
        marks.append("default")
    if policy.is_hidden(model.name):
        marks.append("hidden")
    if model.waiting:
        marks.append(f"{model.waiting} waiting")
    elif model.busy:
        marks.append("busy")
    return marks


def choice_label(model: ServedModel, policy: ModelPolicy) -> str:
    """One model as an autocomplete choice: `sdxl — photoreal, 1024 px · 3 waiting`."""
    about = ", ".join(part for part in (short_description(model.card), native_size(model.card)) if part)
    return plain_text(" · ".join([f"{model.name} — {about}", *state_marks(model, policy)]), CHOICE_NAME)


async def model_choices(interaction: discord.Interaction, current: str, *, hidden_only: bool = False
                        ) -> list[app_commands.Choice[str]]:
    """Autocomplete of the served models whose name contains what was typed: members get the offered ones,
    moderators every one (hidden ones marked); `hidden_only` lists only the hidden ones (for `/mod model show`)."""
    d = deps(interaction)
    served = await d.dispatcher.served_models()
    policy = await d.model_policy.policy(interaction.guild_id or 0)
    typed = (current or "").casefold().strip()
    shown = offered(served, policy, moderator=is_moderator(interaction))
    if hidden_only:
        shown = [m for m in shown if policy.is_hidden(m.name)]
    return [
        app_commands.Choice(name=choice_label(m, policy), value=m.name)
        for m in shown
        if typed in m.name.casefold()
    ][:CHOICES]
