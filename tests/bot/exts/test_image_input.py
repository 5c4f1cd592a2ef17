"""/imagine image: a member's own image as the start of an img2img job: stored with the job (an upload job with one
image row: the file under data/, its sha256), sized for the model, upright, first frame; refusals (not an image, too
many bytes, a 20000x20000 header, strength without image, a text-only model) charge nothing and keep nothing."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import struct
import zlib

from PIL import Image
from sqlalchemy import func, select

from bot.db.models import Job
from bot.services.costs import job_units
from bot.services.images import MAX_SOURCE_BYTES
from bot.services.sources import UPLOAD_PROMPT
from bot.ui.buttons import job_custom_id
from tests.bot.exts.conftest import SHAPES, png

#: The shapes card drawing 128x128 by default (so a source's aspect shows in the job's size).
LARGER = dataclasses.replace(SHAPES, default_width=128, default_height=128)


def huge_header_png(width: int = 20000, height: int = 20000) -> bytes:
    """A small file whose PNG header states `width` x `height` pixels (a decompression bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


async def job_count(world) -> int:
    async with world.services.sessions() as s:
        return (await s.execute(select(func.count()).select_from(Job))).scalar_one()


async def used(world) -> int:
    return (await world.services.quota.status(world.guild.id, world.alice.id, [])).used


async def test_imagine_with_an_image_queues_an_img2img_job_from_the_stored_image(world):
    world.dispatcher.cards = [LARGER]
    source = png((10, 200, 10), (256, 192))
    result = await world.alice.slash(world.art, "imagine", prompt="a green field", image=("field.png", source),
                                     strength=0.4)
    assert not result.ephemeral, result.response.content
    job = await world.latest_job()
    assert (job.mode, job.strength, job.num_images) == ("img2img", 0.4, 4)
    # Sized for the model: the aspect kept, the longer side the card's default (128), on its grid.
    assert (job.width, job.height) == (128, 96)
    # The upload itself costs nothing; the img2img job its work: 4 images at 3/4 of the card's default pixels,
    # running about 0.4 of the steps (of the card's 4: one), 0.75 credits.
    card = world.dispatcher.cards[0]
    assert world.dispatcher.published == [job.id] and await used(world) == job.cost == job_units(job.request, card)
    assert job.cost == 75
    upload = await world.services.jobs.get(job.source_job_id)
    assert (upload.status, upload.cost, upload.prompt, job.source_image_index) == ("posted", 0, UPLOAD_PROMPT, 0)
    stored = await world.services.jobs.get_image(job.source_job_id, 0)
    data = world.services.images.read(stored.path, stored.sha256)  # the recorded sha256 matches the file
    assert stored.sha256 == hashlib.sha256(data).hexdigest() and stored.path.startswith("images/")
    with Image.open(io.BytesIO(data)) as im:
        assert im.size == (128, 96) and im.getpixel((30, 20)) == (10, 200, 10)


async def test_strength_defaults_and_the_result_buttons_work_after_a_restart(world):
    await world.alice.slash(world.art, "imagine", prompt="a field", image=("f.png", png(size=(64, 64))))
    job = await world.latest_job()
    assert job.strength == 0.6
    message = await world.finish(job.id)
    await world.restart()
    # The source is read from the database and the data folder, as the dispatcher does when it hands out the job.
    stored = await world.services.jobs.get_image(job.source_job_id, 0)
    assert world.services.images.read(stored.path, stored.sha256)
    await world.alice.click(message, custom_id=job_custom_id(job.id, "u", 0))
    up = await world.latest_job()
    assert (up.mode, up.source_job_id) == ("upscale", job.id)
    shown = await world.alice.click(message, custom_id=job_custom_id(job.id, "i"))
    assert shown.ephemeral
    # ℹ️ shows the image the job started from, and its strength.
    embed = shown.response.embeds[0]
    assert "source.png" in (embed.thumbnail.url or "") and shown.response.message.attachments[0].filename == "source.png"
    assert {f.name: f.value for f in embed.fields}["Strength"] == "0.6"


async def test_exif_orientation_is_applied_and_an_animation_gives_its_first_frame(world):
    world.dispatcher.cards = [LARGER]
    wide = Image.new("RGB", (64, 32), (255, 0, 0))
    wide.paste((0, 0, 255), (0, 0, 32, 32))  # blue on the left: on top once turned a quarter clockwise
    exif = Image.Exif()
    exif[0x0112] = 6
    out = io.BytesIO()
    wide.save(out, "JPEG", exif=exif.tobytes(), quality=95)
    await world.alice.slash(world.art, "imagine", prompt="turned", image=("photo.jpg", out.getvalue()))
    job = await world.latest_job()
    assert (job.width, job.height) == (64, 128)
    stored = await world.services.jobs.get_image(job.source_job_id, 0)
    with Image.open(io.BytesIO(world.services.images.read(stored.path))) as im:
        top, bottom = im.getpixel((32, 8)), im.getpixel((32, 120))
    assert top[2] > 200 > top[0] and bottom[0] > 200 > bottom[2]

    frames = [Image.new("RGB", (64, 64), c) for c in ((0, 200, 0), (200, 0, 200))]
    anim = io.BytesIO()
    frames[0].save(anim, "WEBP", save_all=True, append_images=frames[1:], duration=100, lossless=True)
    await world.alice.slash(world.art, "imagine", prompt="moving", image=("anim.webp", anim.getvalue()))
    job = await world.latest_job()
    stored = await world.services.jobs.get_image(job.source_job_id, 0)
    with Image.open(io.BytesIO(world.services.images.read(stored.path))) as im:
        assert im.getpixel((64, 64)) == (0, 200, 0)


async def assert_refused_free(world, result, *words: str) -> None:
    assert result.ephemeral, result.response.content
    for word in words:
        assert word in result.response.content, result.response.content
    assert world.dispatcher.published == [] and await used(world) == 0 and await job_count(world) == 0
    assert not list(world.settings.data_dir.rglob("*.png"))  # no upload kept


async def test_an_attachment_that_is_not_an_image_is_refused_and_nothing_charged(world):
    result = await world.alice.slash(world.art, "imagine", prompt="x", image=("notes.png", b"just some text"))
    await assert_refused_free(world, result, "not a PNG, JPEG or WebP image")


async def test_an_attachment_over_the_byte_limit_is_refused_before_it_is_read(world):
    big = png() + b"\0" * (MAX_SOURCE_BYTES + 1)
    result = await world.alice.slash(world.art, "imagine", prompt="x", image=("big.png", big))
    await assert_refused_free(world, result, "MiB", "at most 10 MiB")


async def test_a_20000_by_20000_header_is_refused_from_the_header(world):
    result = await world.alice.slash(world.art, "imagine", prompt="x", image=("bomb.png", huge_header_png()))
    await assert_refused_free(world, result, "more than 16,777,216 pixels")


async def test_strength_without_an_image_and_a_text_only_model_are_refused_free(world):
    result = await world.alice.slash(world.art, "imagine", prompt="x", strength=0.5)
    await assert_refused_free(world, result, "`image`")
    world.dispatcher.cards = [dataclasses.replace(SHAPES, img2img=False)]
    result = await world.alice.slash(world.art, "imagine", prompt="x", image=("f.png", png()))
    await assert_refused_free(world, result, "draws from text only")


async def test_a_refused_job_leaves_no_upload_behind(world):
    """The quota refuses the job after the upload was stored: the upload job and its file are removed again."""
    await world.services.quota.set_limit(world.guild.id, world.alice.id, world.mod.id, images_per_day=2,
                                         relax_per_day=0)
    result = await world.alice.slash(world.art, "imagine", prompt="x", image=("f.png", png()))
    await assert_refused_free(world, result, "0.02 of your 0.02")


async def test_the_upload_does_not_trip_the_cooldown_but_the_job_does(world):
    """With a cooldown, /imagine image: goes through (the stored upload starts no cooldown of its own); a second one
    right after is refused for the cooldown, charges nothing and keeps no upload."""
    world.settings.imagine_cooldown_seconds = 60
    first = await world.alice.slash(world.art, "imagine", prompt="x", image=("f.png", png()))
    assert not first.ephemeral, first.response.content
    files = sorted(world.settings.data_dir.rglob("*.png"))
    second = await world.alice.slash(world.art, "imagine", prompt="y", image=("g.png", png()))
    assert second.ephemeral and "a little fast" in second.response.content
    job = await world.latest_job()
    assert await used(world) == job.cost > 0 and sorted(world.settings.data_dir.rglob("*.png")) == files
