"""The gallery over plain HTTP (the ASGI app in the test's loop): what is shown, what never is, search, filters,
bounds, escaping, headers, images and thumbnails."""

from __future__ import annotations

import io
import os
import re
import stat

import pytest
from PIL import Image

from bot.gallery import catalog as catalog_module
from bot.gallery.thumbs import THUMB_SIDE
from bot.gallery.web import SECURITY_HEADERS, create_app
from tests.bot.gallery.seed import ALICE, BOB, GUILD, HOSTILE_PROMPT, NAMES, STUDIO, posted_job


def job_ids(html: str) -> list[int]:
    return [int(x) for x in re.findall(r'data-job="(\d+)"', html)]


async def listed(client, **params) -> list[int]:
    r = await client.get("/", params=params)
    assert r.status_code == 200, r.text
    return job_ids(r.text)


async def test_the_gallery_lists_the_shown_jobs_newest_first(client, seeded):
    assert await listed(client) == seeded.shown
    assert len(seeded.shown) == 5


@pytest.mark.parametrize("reason", ["private", "deleted", "hidden", "nsfw", "guild", "queued"])
async def test_a_job_that_must_not_show_appears_nowhere(client, seeded, reason):
    """Hidden, deleted, private-channel, flagged, other-guild and unposted jobs: not in the list, not found by a
    word of their prompt, and every URL of theirs (page, image, thumbnail) answers 404."""
    job_id, word = seeded.never[reason], seeded.never_words[reason]
    page = await client.get("/")
    assert job_id not in job_ids(page.text) and word not in page.text
    found = await client.get("/", params={"q": word})
    assert found.status_code == 200 and job_ids(found.text) == [] and "No posted image matches" in found.text
    for url in (f"/job/{job_id}", f"/image/{job_id}/0.png", f"/thumb/{job_id}/0.webp"):
        r = await client.get(url)
        assert r.status_code == 404, url
        assert word not in r.text and "no such image in the gallery" in r.text


async def test_search_finds_a_word_of_the_prompt(client, seeded):
    assert await listed(client, q="triangle") == [seeded.by_name["yellow"]]
    assert await listed(client, q="TRIANGLE") == [seeded.by_name["yellow"]]  # case is ignored
    assert await listed(client, q="cafe") == [seeded.by_name["green"]]  # so are accents
    # Every word must be found.
    assert await listed(client, q="red circle") == [seeded.by_name["variation"], seeded.by_name["red"]]
    assert await listed(client, q="red triangle") == []
    # Whole words: "circ" is not "circle".
    assert await listed(client, q="circ") == []


async def test_search_text_is_never_read_as_fts_syntax(client, seeded):
    """Operators and quotes a visitor types are words or nothing, never FTS5 syntax (no error, no widening)."""
    assert await listed(client, q="circle OR violet") == []  # OR is a word here, and no shown prompt has it
    assert await listed(client, q='red" OR "violet') == []
    assert await listed(client, q="NEAR(red blue)") == []  # NEAR is a word too, and no prompt has it
    assert await listed(client, q="(red) -circle") == [seeded.by_name["variation"], seeded.by_name["red"]]
    assert await listed(client, q="prompt:red") == []  # no column filter: "prompt" is a word
    assert await listed(client, q="star*") == [seeded.by_name["hostile"]]


async def test_filters_by_member_and_model(client, seeded):
    assert await listed(client, member=str(ALICE)) == [seeded.by_name["yellow"], seeded.by_name["red"]]
    assert await listed(client, member=str(BOB)) == [seeded.by_name["variation"], seeded.by_name["green"]]
    assert await listed(client, model="tiny-sd") == [seeded.by_name["yellow"]]
    assert await listed(client, model="tiny-sd", member=str(BOB)) == []
    assert await listed(client, q="circle", member=str(BOB)) == [seeded.by_name["variation"]]
    assert await listed(client, guild=str(GUILD)) == seeded.shown
    assert await listed(client, guild="5000") == []  # the guild not allowed


async def test_style_filter_lists_the_jobs_made_with_a_style(client, seeded, services):
    """Jobs record the style they were made with (`/imagine style:`, bot.services.styles): `?style=` lists those,
    and the job's page names it with a link to the filter."""
    inked = await posted_job(services, prompt="an inked grey circle", style="ink")
    assert await listed(client, style="ink") == [inked]
    assert await listed(client, style="watercolour") == []
    page = (await client.get(f"/job/{inked}")).text
    assert "<dt>Style</dt>" in page and "style=ink" in page


#: Query parameters out of bounds, and the words the 400 page has to say (HTML-escaped).
BAD_QUERIES = [
    ({"page": "0"}, "`page` is &#39;0&#39;"),
    ({"page": "501"}, "`page` is &#39;501&#39;, but it has to be a whole number from 1 to 500"),
    ({"page": "abc"}, "`page` is &#39;abc&#39;"),
    ({"page": "1e3"}, "`page` is &#39;1e3&#39;"),
    ({"page": "\uff19"}, "`page`"),
    ({"member": "alice"}, "`member` is &#39;alice&#39;, but it has to be a member&#39;s id"),
    ({"member": "-3"}, "`member` is &#39;-3&#39;"),
    ({"member": str(2**63)}, "`member`"),
    ({"guild": "0"}, "`guild` is &#39;0&#39;"),
    ({"q": "x" * 201}, "`q` is 201 characters long, but a search takes at most 200"),
    ({"q": " ".join(["w"] * 13)}, "`q` has 13 words, but a search looks for at most 12"),
    ({"q": '"*"'}, "which has no word to search for"),
    ({"model": "m" * 201}, "`model` is 201 characters long"),
]


async def test_bad_query_values_are_refused_naming_them(client, seeded):
    for params, named in BAD_QUERIES:
        r = await client.get("/", params=params)
        assert r.status_code == 400, params
        assert named in r.text, params
        assert 'data-job="' not in r.text


async def test_a_parameter_given_twice_and_an_overlong_query_are_refused(client, seeded):
    twice = await client.get("/?page=1&page=2")
    assert twice.status_code == 400 and "`page` is given more than once" in twice.text
    long = await client.get("/", params={"junk": "x" * 1100})
    assert long.status_code == 400 and "at most 1024" in long.text
    # Unknown parameters are ignored.
    assert await listed(client, utm_source="x") == seeded.shown


async def test_pages_of_the_gallery(client, seeded, monkeypatch):
    monkeypatch.setattr(catalog_module, "PAGE_SIZE", 2)
    first = await client.get("/")
    assert job_ids(first.text) == seeded.shown[:2]
    assert 'rel="next" href="/?page=2"' in first.text and 'rel="prev"' not in first.text
    assert await listed(client, page="2") == seeded.shown[2:4]
    last = await client.get("/", params={"page": "3"})
    assert job_ids(last.text) == seeded.shown[4:]
    assert 'rel="next"' not in last.text and 'rel="prev" href="/?page=2"' in last.text
    beyond = await client.get("/", params={"page": "9"})
    assert beyond.status_code == 200 and job_ids(beyond.text) == [] and "past the last one" in beyond.text
    # The filters stay in the page links.
    filtered = await client.get("/", params={"q": "red", "member": str(BOB)})
    assert job_ids(filtered.text) == [seeded.by_name["variation"]]


async def test_the_job_page_shows_its_parameters_and_links_to_discord(client, seeded, services):
    job_id = seeded.by_name["red"]
    job = await services.jobs.get(job_id)
    r = await client.get(f"/job/{job_id}")
    assert r.status_code == 200
    html = r.text
    assert "a red circle on a blue background" in html and "blurry, text" in html
    for text in ("320 × 320", "<dd>20</dd>", "DPM++ 2M", f"<dd>{job.seed}</dd>", "alice", "shapes"):
        assert text in html, text
    assert f'href="https://discord.com/channels/{GUILD}/{job.posted_channel_id}/{job.posted_message_id}"' in html
    assert f'src="/image/{job_id}/0.png"' in html and f'src="/image/{job_id}/1.png"' in html
    assert f'href="/?member={ALICE}"' in html and 'href="/?model=shapes"' in html


async def test_a_variation_of_a_job_not_shown_does_not_link_to_it(client, seeded):
    html = (await client.get(f"/job/{seeded.by_name['variation']}")).text
    assert "variation of an image not in the gallery" in html
    assert f"/job/{seeded.never['private']}" not in html and "violet" not in html


async def test_prompts_and_names_are_escaped(client, seeded):
    job_id = seeded.by_name["hostile"]
    for html in ((await client.get("/")).text, (await client.get(f"/job/{job_id}")).text,
                 (await client.get("/", params={"q": '<script>alert("x")</script>'})).text):
        assert "<script>" not in html and "<b>bold</b>" not in html
    page = (await client.get(f"/job/{job_id}")).text
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; a purple star &amp; &lt;b&gt;bold&lt;/b&gt;" in page
    assert HOSTILE_PROMPT not in page


async def test_every_response_carries_the_security_headers(client, seeded):
    for url in ("/", "/?page=0", "/job/424242", "/static/gallery.css", f"/image/{seeded.shown[0]}/0.png",
                f"/thumb/{seeded.shown[0]}/0.webp", f"/job/{seeded.shown[0]}"):
        r = await client.get(url)
        for name, value in SECURITY_HEADERS.items():
            assert r.headers[name] == value, (url, name)
    assert "script-src" not in r.headers["content-security-policy"]  # default-src 'none': no script at all
    post = await client.post("/")
    assert post.headers["x-content-type-options"] == "nosniff"


async def test_images_are_checked_and_served_without_their_text_chunks(client, seeded, services, settings):
    job_id = seeded.by_name["red"]
    job = await services.jobs.get(job_id)
    stored = services.images.read(job.images[0].path)
    assert b"parameters" in stored
    r = await client.get(f"/image/{job_id}/0.png")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.headers["etag"] == f'"{job.images[0].sha256}"' and r.headers["cache-control"] == "no-cache"
    assert b"parameters" not in r.content and b"tEXt" not in r.content
    with Image.open(io.BytesIO(r.content)) as served, Image.open(io.BytesIO(stored)) as original:
        assert served.size == original.size and served.tobytes() == original.tobytes()
        assert "parameters" not in served.info
    again = await client.get(f"/image/{job_id}/0.png", headers={"if-none-match": r.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    # A file changed on disk no longer matches its sha256: it is not served.
    path = services.images.absolute(job.images[1].path)
    path.write_bytes(path.read_bytes()[:-20] + b"\0" * 20)
    damaged = await client.get(f"/image/{job_id}/1.png")
    assert damaged.status_code == 404 and damaged.headers["content-type"].startswith("text/html")


async def test_thumbnails_are_made_once_as_private_webp_files(app, client, seeded, services, settings):
    job_id = seeded.by_name["yellow"]
    job = await services.jobs.get(job_id)
    first = await client.get(f"/thumb/{job_id}/0.webp")
    assert first.status_code == 200 and first.headers["content-type"] == "image/webp"
    with Image.open(io.BytesIO(first.content)) as im:
        assert im.format == "WEBP" and max(im.size) == THUMB_SIDE
    second = await client.get(f"/thumb/{job_id}/0.webp")
    assert second.content == first.content
    assert app.state.thumbs.made == 1  # made once, then read from its file
    file = settings.data_dir / "thumbs" / "0" / f"{job_id}_0_{job.images[0].sha256[:16]}.webp"
    assert file.read_bytes() == first.content
    assert stat.S_IMODE(os.stat(file).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(file.parent).st_mode) == 0o700
    assert not [p for p in file.parent.iterdir() if p.name.endswith(".tmp")]
    cached = await client.get(f"/thumb/{job_id}/0.webp", headers={"if-none-match": first.headers["etag"]})
    assert cached.status_code == 304


async def test_requests_for_many_thumbnails_at_once_make_each_once(app, client, seeded):
    import asyncio

    urls = [f"/thumb/{j}/0.webp" for j in seeded.shown] * 4
    answers = await asyncio.gather(*(client.get(u) for u in urls))
    assert all(a.status_code == 200 for a in answers)
    assert app.state.thumbs.made == len(seeded.shown)


async def test_anything_else_is_404(client, seeded):
    for url in ("/job/abc", "/job/999999", "/job/0", "/job/" + "9" * 30, "/image/1/9.png", "/image/1/0.webp",
                "/thumb/1/0.png", "/image/1/x.png", "/static/../catalog.py", "/static/missing.css", "/nothing-here",
                "/job/1/extra"):
        r = await client.get(url)
        assert r.status_code == 404 and "Not in the gallery" in r.text, url


async def test_only_get_and_head_are_answered(client, seeded):
    r = await client.post("/", content=b"x")
    assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD"
    head = await client.head("/")
    assert head.status_code == 200


async def test_hiding_and_showing_a_job_takes_effect_at_once(app, client, seeded, services):
    job_id = seeded.by_name["green"]
    catalog = app.state.catalog
    assert await catalog.set_hidden(GUILD, job_id, True, by=9)
    assert not await catalog.set_hidden(GUILD, job_id, True, by=9)  # already hidden: nothing changes
    assert job_id not in await listed(client)
    assert (await client.get(f"/thumb/{job_id}/0.webp")).status_code == 404
    assert await catalog.set_hidden(GUILD, job_id, False, by=9)
    assert job_id in await listed(client)
    actions = [(e.action, e.target) for e in await services.audit.recent(GUILD)]
    assert actions[:2] == [("gallery.unhide", f"job:{job_id}"), ("gallery.hide", f"job:{job_id}")]


async def test_a_channel_closed_to_everyone_leaves_the_gallery_at_once(client, seeded, public_channels):
    job_id = seeded.by_name["yellow"]
    assert job_id in await listed(client)
    public_channels.discard(STUDIO)
    assert job_id not in await listed(client)
    assert (await client.get(f"/job/{job_id}")).status_code == 404
    assert (await client.get(f"/image/{job_id}/0.png")).status_code == 404


async def test_a_job_deleted_with_the_bin_leaves_the_gallery_and_search(client, seeded, services):
    job_id = seeded.by_name["red"]
    assert job_id in await listed(client, q="blue")
    await services.jobs.mark_deleted(job_id)
    assert job_id not in await listed(client)
    assert await listed(client, q="blue") == []
    assert (await client.get(f"/job/{job_id}")).status_code == 404


async def test_the_public_url_prefixes_every_link(services, gallery_settings, seeded):
    import httpx

    settings = gallery_settings.model_copy(update={"gallery_public_url": "https://art.example.org/gallery"})
    app = create_app(services, settings, lambda g, c: True, member_name=lambda g, u: NAMES.get(u))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gallery.test") as c:
        html = (await c.get("/")).text
    assert 'href="/gallery/static/gallery.css"' in html and 'action="/gallery/"' in html
    assert f'href="/gallery/job/{seeded.shown[0]}"' in html and 'src="/gallery/thumb/' in html
    assert not re.search(r'(href|src|action)="/(?!gallery/)', html)


async def test_a_failing_channel_check_hides_the_channel_instead_of_failing(services, gallery_settings, seeded):
    import httpx

    def broken(guild, channel):
        raise RuntimeError("cache gone")

    app = create_app(services, gallery_settings, broken)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gallery.test") as c:
        r = await c.get("/")
        assert r.status_code == 200 and job_ids(r.text) == []
        assert (await c.get(f"/job/{seeded.shown[0]}")).status_code == 404


async def test_channels_holding_posted_jobs_are_read_again_after_their_ttl(services, gallery_settings, seeded):
    from bot.gallery.catalog import CHANNELS_TTL, GalleryCatalog
    from tests.bot.gallery.seed import posted_job

    now = [0.0]
    catalog = GalleryCatalog(services.sessions, channel_is_public=lambda g, c: True, allowed_guild_ids=[GUILD],
                             clock=lambda: now[0])
    before = await catalog.posted_channels()
    new = await posted_job(services, channel=7777, prompt="a new channel's first circle")
    assert await catalog.posted_channels() == before  # within the TTL: the list is reused
    now[0] += CHANNELS_TTL + 1
    assert (GUILD, 7777) in await catalog.posted_channels()
    assert (await catalog.job(new)) is not None


async def test_an_error_answers_500_with_the_headers_and_no_details(app, seeded, monkeypatch, caplog):
    import httpx

    async def broken(filters):
        raise RuntimeError("database on fire at /secret/path")

    monkeypatch.setattr(app.state.catalog, "page", broken)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://gallery.test") as c:
        r = await c.get("/")
    assert r.status_code == 500 and "could not answer this request" in r.text
    assert "on fire" not in r.text and "/secret/path" not in r.text
    for name, value in SECURITY_HEADERS.items():
        assert r.headers[name] == value
    assert "database on fire" in caplog.text  # the operator finds it in the log


async def test_whatever_a_visitor_types_is_answered_200_or_400(client, seeded):
    """Random text, FTS5 operators and odd characters in every parameter: a page or a 400, never a 500."""
    import random

    rng = random.Random(19)
    alphabet = list('abc xyz"*^:()-+~{}[]<>&;\'\\/%#?=,.!|') + ["NEAR", "AND", "OR", "NOT", "é", "猫", "\u200b", "\x00"]
    seen = set()
    for _ in range(150):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        name = rng.choice(["q", "q", "q", "model", "member", "page", "guild"])
        r = await client.get("/", params={name: text})
        assert r.status_code in (200, 400), (name, text, r.status_code)
        seen.add(r.status_code)
    assert seen == {200, 400}
