"""The one error handler: friendly for domain errors, an apology with ids for bugs."""

from __future__ import annotations

import logging
import re
import subprocess
import sys

from bot.ui.buttons import job_custom_id


async def test_unexpected_error_in_a_button_apologises_with_job_id_and_logs_it(world, monkeypatch, caplog):
    """A bug behind ℹ️ gives the member an apology naming the job and an error id that is in the log."""
    await world.alice.slash(world.art, "imagine", prompt="a red circle")
    job = await world.latest_job()
    message = await world.finish(job.id)

    async def broken(job_id):
        raise RuntimeError("database on fire")

    monkeypatch.setattr(world.services.jobs, "find", broken)
    with caplog.at_level(logging.ERROR, logger="bot.errors"):
        result = await world.alice.click(message, custom_id=job_custom_id(job.id, "i"))
    text = result.response.content
    assert result.ephemeral and f"job #{job.id}" in text and "database on fire" not in text
    error_id = re.search(r"error `([0-9a-f]+)`", text)[1]
    assert any(error_id in r.getMessage() and r.exc_info for r in caplog.records)


async def test_unexpected_error_in_a_command_apologises(world, monkeypatch, caplog):
    """A bug behind a slash command is answered with a short apology, not silence."""

    async def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(world.services.quota, "status", broken)
    with caplog.at_level(logging.ERROR, logger="bot.errors"):
        result = await world.alice.slash(world.art, "quota")
    assert result.ephemeral and result.response.content.startswith("Sorry")
    assert any("quota" in r.getMessage() for r in caplog.records)


def test_importing_the_bot_does_not_import_torch():
    """Every bot module imports without pulling in torch or diffusers."""
    code = (
        "import sys, bot.app, bot.__main__, bot.exts.imagine, bot.exts.buttons, bot.exts.account, bot.exts.mod, "
        "bot.exts.errors, bot.ui.embeds, bot.ui.images, bot.dispatch.local;"
        "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
