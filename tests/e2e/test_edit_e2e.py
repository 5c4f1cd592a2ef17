"""Editing from images through the wire: the real `python -m bot` process, its embedded nats-server and a local
worker running the fake engine, against the project's fake Discord. `/imagine image:` → a grid; U1 → the upscaled
image; Vary (Region) (menu, then prompt modal) → the redrawn image; Zoom Out 2x → the grown image: a result posted
each time, each the size its job makes."""

from __future__ import annotations

import io

import pytest
import pytest_asyncio
from PIL import Image

from tests.e2e.conftest import GRID_TIMEOUT, running_e2e

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.slow]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def edit_e2e(tmp_path_factory):
    root = tmp_path_factory.mktemp("edit-e2e")
    (root / "model").mkdir()
    async with running_e2e(root, root / "model", "fake", worker_args="--fake-engine 0.01") as world:
        yield world


def ids_of(message: dict) -> list[str]:
    return [c["custom_id"] for row in message["components"] for c in row["components"] if "custom_id" in c]


def picture(e2e, message: dict) -> Image.Image:
    return Image.open(io.BytesIO(e2e.fd.file_bytes(message["attachments"][0])))


async def test_image_prompt_then_upscale_vary_region_and_zoom_out_each_post_a_result(edit_e2e):
    e2e = edit_e2e
    ada = e2e.fd.add_user("ada")
    source = io.BytesIO()
    Image.new("RGB", (96, 64), (20, 160, 40)).save(source, "PNG")

    before = {m["id"] for m in e2e.grids()}
    await e2e.fd.slash(ada, e2e.art, "imagine", prompt="a green field", image=("field.png", source.getvalue()),
                       strength=0.5, steps=3, count=2)
    grid = await e2e.wait_grid(before)
    job_id = int(ids_of(grid)[0].split(":")[1])
    row = e2e.job_row(job_id)
    assert (row["mode"], row["strength"], row["source_job_id"] is not None) == ("img2img", 0.5, True)
    width, height = row["width"], row["height"]
    assert width > height  # the source's aspect kept

    before = {m["id"] for m in e2e.grids()}
    await e2e.fd.click(ada, grid, f"job:{job_id}:u:0")
    upscaled = await e2e.wait_grid(before)
    up_id = int(ids_of(upscaled)[0].split(":")[1])
    assert picture(e2e, upscaled).size == (2 * width, 2 * height)
    assert f"job:{up_id}:vr" in ids_of(upscaled) and f"job:{up_id}:o:6" in ids_of(upscaled)  # not square

    shown = await e2e.fd.click(ada, upscaled, f"job:{up_id}:vr")
    menu = await e2e.fd.wait_for(lambda: shown.original_id and e2e.fd.messages.get(shown.original_id), 30,
                                 "the region menu")
    picked = await e2e.fd.select(ada, menu, f"region:{up_id}", ["top-left"])
    await e2e.fd.wait_for(lambda: picked.modal, 30, "the prompt modal")
    before = {m["id"] for m in e2e.grids()}
    await e2e.fd.submit_modal(ada, picked, {"prompt": "a green field with a red barn"})
    redrawn = await e2e.wait_grid(before)
    vr_id = int(ids_of(redrawn)[0].split(":")[1])
    vr_row = e2e.job_row(vr_id)
    assert (vr_row["mode"], vr_row["region"], vr_row["source_job_id"]) == ("inpaint", "top-left", up_id)
    assert picture(e2e, redrawn).size == (2 * width, 2 * height)

    before = {m["id"] for m in e2e.grids()}
    await e2e.fd.click(ada, redrawn, f"job:{vr_id}:o:1")  # Zoom Out 2x
    zoomed = await e2e.wait_grid(before)
    zoom_id = int(ids_of(zoomed)[0].split(":")[1])
    assert e2e.job_row(zoom_id)["outpaint"] == "zoom_2"
    assert picture(e2e, zoomed).size == (4 * width, 4 * height)
    assert (await e2e.wait_status(zoom_id, "posted"))["status"] == "posted"


async def test_describe_posts_four_suggestions_and_a_button_draws_one(edit_e2e):
    """/describe through the worker (the fake engine's captioner names the image's size and colour): the signed
    suggestions are recorded, posted with a button each, and a button draws that suggestion as a grid."""
    e2e = edit_e2e
    bea = e2e.fd.add_user("bea")
    source = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 20, 20)).save(source, "PNG")
    before = {m["id"] for m in e2e.fd.channel_messages(e2e.art["id"])}
    await e2e.fd.slash(bea, e2e.art, "describe", image=("red.png", source.getvalue()))

    def suggestions():
        return [m for m in e2e.fd.channel_messages(e2e.art["id"]) if m["id"] not in before and m["components"]
                and any(":p:" in c.get("custom_id", "") for row in m["components"] for c in row["components"])]

    posted = (await e2e.fd.wait_for(suggestions, GRID_TIMEOUT, "the suggestions"))[0]
    text = posted["embeds"][0]["description"]
    assert text.count("**") >= 8 and "red" in text.lower()
    job_id = int(ids_of(posted)[0].split(":")[1])
    assert e2e.job_row(job_id)["mode"] == "describe" and e2e.used(bea) == 25  # a quarter of a credit, in units
    before = {m["id"] for m in e2e.grids()}
    await e2e.fd.click(bea, posted, f"job:{job_id}:p:0")
    grid = await e2e.wait_grid(before)
    drawn = int(ids_of(grid)[0].split(":")[1])
    row = e2e.job_row(drawn)
    assert row["mode"] == "txt2img" and "red" in row["prompt"].lower() and e2e.used(bea) == 25 + row["cost"]
    assert row["cost"] > 0
