"""open_services: migrate, wire the services, dispose."""

from __future__ import annotations

from bot.config import Settings
from bot.db import current_revision
from bot.db.migrate import head_revision
from bot.services import open_services


async def test_open_services_migrates_a_new_database_and_works(tmp_path):
    """A data folder with no database becomes a migrated one whose services create jobs and save images."""
    settings = Settings(_env_file=None, data_dir=tmp_path / "data", database_url="")
    async with open_services(settings) as services:
        job = await services.jobs.create(1, 2, 3, [], prompt="a boat", num_images=1)
        path, _ = services.images.save(job.id, 0, b"png")
    assert await current_revision(settings.database_url) == head_revision()
    assert (tmp_path / "data" / "bot.db").exists()
    assert (tmp_path / "data" / path).read_bytes() == b"png"
