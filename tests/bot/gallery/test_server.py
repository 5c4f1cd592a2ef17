"""The gallery served by uvicorn in the test's (the bot's) event loop, over real HTTP on 127.0.0.1: start, stop, a
port already taken, signals left to the bot; and the bot itself serving it with GALLERY_PORT set, public channels
told by discord.py's cache (simcord)."""

from __future__ import annotations

import signal

import httpx
import pytest

from bot.gallery.server import GalleryError, GalleryServer, public_channel_check
from bot.gallery.web import SECURITY_HEADERS


async def test_the_server_answers_over_http_and_leaves_the_signals_to_the_bot(app, seeded):
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    server = GalleryServer(app, "127.0.0.1", 0)
    await server.start()
    try:
        assert server.port > 0
        assert {sig: signal.getsignal(sig) for sig in before} == before
        async with httpx.AsyncClient(base_url=server.url) as client:
            r = await client.get("/")
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
            assert f'data-job="{seeded.shown[0]}"' in r.text
            assert "server" not in r.headers  # no uvicorn banner
            for name, value in SECURITY_HEADERS.items():
                assert r.headers[name] == value
            head = await client.head("/")
            assert head.status_code == 200 and head.content == b""
            image = await client.get(f"/image/{seeded.shown[0]}/0.png")
            assert image.status_code == 200 and image.content.startswith(b"\x89PNG")
            assert (await client.get(f"/job/{seeded.never['private']}")).status_code == 404
    finally:
        await server.stop()
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient(base_url=server.url) as client:
            await client.get("/")


async def test_a_port_already_taken_is_a_clear_error(app, seeded):
    first = GalleryServer(app, "127.0.0.1", 0)
    await first.start()
    try:
        second = GalleryServer(app, "127.0.0.1", first.port)
        with pytest.raises(GalleryError, match=rf"127\.0\.0\.1:{first.port} \(GALLERY_HOST, GALLERY_PORT\)"):
            await second.start()
    finally:
        await first.stop()


async def test_the_bot_serves_the_gallery_with_gallery_port_set(tmp_path, migrated_db):
    """ImagineBot starts the gallery in setup_hook (GALLERY_PORT=0: a free port) and stops it in close. Public
    channels come from discord.py's cache: a job in the art channel shows; one in a channel @everyone can not view
    does not."""
    from tests.bot.exts.conftest import World
    from tests.bot.exts.test_visibility import secret_job

    world = World(tmp_path, migrated_db)
    world.settings = world.settings.model_copy(update={"gallery_port": 0})
    await world.start()
    try:
        gallery = world.bot.gallery
        assert gallery is not None and gallery.port > 0
        await world.alice.slash(world.art, "imagine", prompt="a public red circle")
        public_job = await world.latest_job()
        await world.finish(public_job.id)
        private_job, _ = await secret_job(world, prompt="a secret violet moon")
        check = public_channel_check(world.bot)
        assert check(world.guild.id, world.art.id) is True
        assert check(world.guild.id, private_job.channel_id) is False
        assert check(world.guild.id, 123) is False and check(424242, world.art.id) is False
        async with httpx.AsyncClient(base_url=gallery.url) as client:
            page = await client.get("/")
            assert f'data-job="{public_job.id}"' in page.text and "a public red circle" in page.text
            assert f'data-job="{private_job.id}"' not in page.text and "violet" not in page.text
            assert f'href="/?member={world.alice.id}"' in page.text
            assert (await client.get(f"/job/{private_job.id}")).status_code == 404
            assert (await client.get(f"/thumb/{public_job.id}/0.webp")).status_code == 200
        url = gallery.url
        await world.bot.close()  # what `async with bot` in bot/__main__.py does on the way out
        assert world.bot.gallery is None
    finally:
        await world.close()
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient(base_url=url) as client:
            await client.get("/")
