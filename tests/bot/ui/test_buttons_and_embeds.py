"""Button custom_ids carry the job, and embeds stay within Discord's limits."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest

from bot.ui.buttons import JobButton, grid_view, job_custom_id
from bot.ui.embeds import parameters_embed, result_embed

JOB = SimpleNamespace(
    id=42, prompt="@everyone " + "x" * 5000, negative_prompt="<@123456789012345678> " * 300, seed=7, steps=20,
    guidance=7.5, width=512, height=512, scheduler="dpmpp_2m", num_images=4, mode="txt2img", status="posted",
    strength=0.35, source_job_id=None, source_image_index=None, model="", user_id=1, created_at=None,
)


def test_custom_id_round_trips_through_the_template():
    """The id built for a button matches the DynamicItem template and gives back job, action and index."""
    cid = job_custom_id(123456789, "vS", 3)
    match = re.fullmatch(JobButton.__discord_ui_compiled_template__, cid)
    assert match and (match["job_id"], match["action"], match["index"]) == ("123456789", "vS", "3")


def test_index_is_required_exactly_for_image_actions():
    """Upscale needs an image index; reroll refuses one."""
    with pytest.raises(ValueError):
        job_custom_id(1, "u")
    with pytest.raises(ValueError):
        job_custom_id(1, "r", 0)


def test_grid_view_has_every_button_with_unique_ids():
    """A four-image grid gets U1–U4, V1–V4 subtle and strong, reroll, remix, info and delete."""
    view = grid_view(42, 4)
    ids = [item.custom_id for item in view.children]
    assert len(ids) == len(set(ids)) == 4 + 4 + 4 + 4
    assert "job:42:u:0" in ids and "job:42:vS:3" in ids and "job:42:r" in ids and "job:42:d" in ids


def test_result_embed_with_huge_prompt_fits_and_does_not_ping():
    """A 5000-character prompt full of mentions still gives a valid embed without mentions."""
    embed = result_embed(JOB, "<@1>", filename="grid.png")
    assert len(embed) <= 6000 and len(embed.title) <= 256
    assert "@everyone" not in embed.title and "<@123456789012345678>" not in (embed.description or "")


def test_parameters_embed_fields_fit():
    """Every field of the parameters embed is within 1024 characters."""
    embed = parameters_embed(JOB)
    assert all(len(f.value) <= 1024 for f in embed.fields) and len(embed) <= 6000
