"""The fake Discord speaks enough of the protocol for a real discord.py bot."""

from __future__ import annotations

import asyncio
import contextlib

import discord
import pytest
import yarl
from discord import app_commands
from discord.ext import commands

from tests.support.fakediscord import FakeDiscord


@contextlib.asynccontextmanager
async def running_bot(fd: FakeDiscord, bot: commands.Bot):
    """Point discord.py at the fake server, run `bot`, and put everything back afterwards."""
    old_base, old_gateway = discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    discord.http.Route.BASE = fd.api_base
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(fd.gateway_url)
    task = asyncio.create_task(bot.start(fd.token))
    try:
        await fd.wait_until_ready(10)
        yield bot
    finally:
        await bot.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 5)
        discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = old_base, old_gateway


def make_bot() -> commands.Bot:
    bot = commands.Bot(command_prefix=commands.when_mentioned, intents=discord.Intents.default(), allowed_mentions=discord.AllowedMentions.none())

    class Ask(discord.ui.Modal, title="Ask"):
        text = discord.ui.TextInput(label="Text", custom_id="text")

        async def on_submit(self, interaction: discord.Interaction) -> None:
            await interaction.response.send_message(f"got {self.text.value}")

    class Buttons(discord.ui.View):
        @discord.ui.button(label="Ask", custom_id="ask")
        async def ask(self, interaction: discord.Interaction, _button: discord.ui.Button) -> None:
            await interaction.response.send_modal(Ask())

    @bot.tree.command(name="echo")
    @app_commands.describe(text="what to say")
    async def echo(interaction: discord.Interaction, text: str, times: app_commands.Range[int, 1, 3] = 1) -> None:
        await interaction.response.defer(thinking=True)
        await interaction.edit_original_response(content=text * times, attachments=[discord.File(__file__, filename="a.png")])
        await interaction.channel.send("channel " + text, view=Buttons(timeout=None))

    async def setup_hook() -> None:
        await bot.tree.sync()

    bot.setup_hook = setup_hook
    return bot


async def test_slash_command_is_deferred_then_edited_with_a_file():
    """A synced slash command reaches the bot; its deferred answer is edited with an attachment."""
    async with FakeDiscord() as fd, running_bot(fd, make_bot()):
        channel = fd.add_channel("art")
        await fd.wait_for(lambda: fd.commands.get("global"), 10, "command sync")
        user = fd.add_user("alice")
        record = await fd.slash(user, channel, "echo", text="hi", times=2)
        msg = await fd.wait_for(lambda: record.original_id and fd.messages[record.original_id]["attachments"] and fd.messages[record.original_id], 10)
        assert record.callback_types == [5]
        assert msg["content"] == "hihi"
        assert fd.file_bytes(msg["attachments"][0]) == open(__file__, "rb").read()


async def test_button_click_opens_modal_and_submission_reaches_the_bot():
    """Clicking a button on a channel message and submitting the modal round-trips through the gateway."""
    async with FakeDiscord() as fd, running_bot(fd, make_bot()):
        channel = fd.add_channel("art")
        await fd.wait_for(lambda: fd.commands.get("global"), 10, "command sync")
        user = fd.add_user("bob")
        await fd.slash(user, channel, "echo", text="x")
        posted = await fd.wait_for(lambda: [m for m in fd.channel_messages(channel["id"]) if m["content"] == "channel x"], 10)
        click = await fd.click(user, posted[0], "ask")
        await fd.wait_for(lambda: click.modal, 10, "modal")
        submit = await fd.submit_modal(user, click, {"text": "yes"})
        answer = await fd.wait_for(lambda: submit.original_id and fd.messages[submit.original_id], 10)
        assert answer["content"] == "got yes"


async def test_everyone_in_content_pings_only_without_allowed_mentions():
    """The server counts an @everyone ping unless allowed_mentions forbids it."""
    fd = FakeDiscord()
    channel = fd.add_channel("c")
    pinging = fd._create_message(channel["id"], {"content": "@everyone look"}, [])
    quiet = fd._create_message(channel["id"], {"content": "@everyone look", "allowed_mentions": {"parse": []}}, [])
    assert pinging["mention_everyone"] and not quiet["mention_everyone"]
    assert fd.pinged() == [pinging]


@pytest.mark.parametrize("content_type", ["application/json"])
async def test_json_responses_have_exact_content_type(content_type):
    """discord.py only parses JSON when the Content-Type has no charset suffix."""
    import aiohttp

    async with FakeDiscord() as fd, aiohttp.ClientSession() as session:
        async with session.get(fd.api_base + "/users/@me", headers={"Authorization": f"Bot {fd.token}"}) as resp:
            assert resp.headers["Content-Type"] == content_type


async def test_late_acknowledgement_is_refused_like_discord(monkeypatch):
    """An interaction answered after the deadline gets 404 Unknown Interaction and is recorded as late."""
    import tests.support.fakediscord as server

    monkeypatch.setattr(server, "ACK_DEADLINE", 0.2)
    bot = commands.Bot(command_prefix=commands.when_mentioned, intents=discord.Intents.default())
    failures: list[BaseException] = []

    @bot.tree.command(name="slow")
    async def slow(interaction: discord.Interaction) -> None:
        await asyncio.sleep(0.5)
        try:
            await interaction.response.send_message("too late")
        except discord.NotFound as exc:
            failures.append(exc)

    async def setup_hook() -> None:
        await bot.tree.sync()

    bot.setup_hook = setup_hook
    async with FakeDiscord() as fd, running_bot(fd, bot):
        channel = fd.add_channel("c")
        await fd.wait_for(lambda: fd.commands.get("global"), 10, "command sync")
        record = await fd.slash(fd.add_user("u"), channel, "slow")
        await fd.wait_for(lambda: fd.late_acks, 10, "the late answer")
        assert fd.late_acks == [record] and record.callbacks == []
        await asyncio.sleep(0.1)
        assert failures
