"""Thumbnails: their size and format, a damaged source refused, and the sweep of thumbnails whose image is gone."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from bot.gallery.catalog import GalleryCatalog
from bot.gallery.thumbs import THUMB_SIDE, ThumbnailCache, make_thumbnail, thumbnail_size
from bot.services.images import ImageDamaged
from tests.bot.gallery.seed import posted_job


@pytest.mark.parametrize(("size", "expected"), [((320, 320), (256, 256)), ((640, 320), (256, 128)),
                                                ((200, 1000), (51, 256)), ((128, 96), (128, 96))])
def test_a_thumbnail_fits_the_side_and_keeps_the_shape(size, expected):
    out = io.BytesIO()
    Image.new("RGB", size, (10, 200, 30)).save(out, format="PNG")
    with Image.open(io.BytesIO(make_thumbnail(out.getvalue()))) as im:
        assert im.format == "WEBP" and im.size == expected
    assert thumbnail_size(*size) == expected
    assert max(expected) <= THUMB_SIDE


async def test_a_source_that_does_not_match_its_sha256_gets_no_thumbnail(services, settings):
    job_id = await posted_job(services, prompt="a red circle")
    image = (await services.jobs.get(job_id)).images[0]
    path = services.images.absolute(image.path)
    path.write_bytes(path.read_bytes() + b"tampered")
    thumbs = ThumbnailCache(settings.data_dir, services.images)
    with pytest.raises(ImageDamaged):
        await thumbs.get(job_id, 0, image.path, image.sha256)
    assert not thumbs.path(job_id, 0, image.sha256).exists() and thumbs.made == 0


async def test_the_sweep_removes_thumbnails_of_deleted_and_expired_images_only(services, settings):
    from sqlalchemy import update

    from bot.db.models import Image as ImageRow

    kept = await posted_job(services, prompt="a kept circle")
    hidden = await posted_job(services, prompt="a hidden circle")
    deleted = await posted_job(services, prompt="a deleted circle")
    expired = await posted_job(services, prompt="an expired circle")
    thumbs = ThumbnailCache(settings.data_dir, services.images)
    files = {}
    for job_id in (kept, hidden, deleted, expired):
        img = (await services.jobs.get(job_id)).images[0]
        await thumbs.get(job_id, 0, img.path, img.sha256)
        files[job_id] = thumbs.path(job_id, 0, img.sha256)
    stale_key = thumbs.path(kept, 0, "f" * 64)  # a thumbnail of an earlier picture of the same image
    stale_key.write_bytes(b"old")
    gone_row = thumbs.path(987_654, 0, "a" * 64)  # a job no longer in the database
    gone_row.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    gone_row.write_bytes(b"old")
    leftover = files[kept].parent / f".{files[kept].name}.abc.tmp"  # what a crash mid-write leaves
    leftover.write_bytes(b"half")

    catalog = GalleryCatalog(services.sessions)
    await catalog.set_hidden(1000, hidden, True, by=9)
    await services.jobs.mark_deleted(deleted)
    async with services.sessions() as s:  # the retention sweeper's mark: the file was removed
        await s.execute(update(ImageRow).where(ImageRow.job_id == expired).values(path=""))
        await s.commit()

    removed = await thumbs.sweep(catalog.thumbnail_keys)
    assert removed == 5
    assert files[kept].exists() and files[hidden].exists()
    assert not files[deleted].exists() and not files[expired].exists()
    assert not stale_key.exists() and not gone_row.exists() and not leftover.exists()
    assert await thumbs.sweep(catalog.thumbnail_keys) == 0
