"""The gallery's web application (Starlette, Jinja2 templates): `create_app`.

Pages
-----
    /                         posted images, newest first; ?q= prompt words, ?member= ?model= ?style= ?guild= filters,
                              ?page= (1 to MAX_PAGE)
    /job/<id>                 one job: its images, parameters, and a link to its message in Discord
    /image/<id>/<index>.png   an image as stored (its sha256 checked), without the PNG text chunks
    /thumb/<id>/<index>.webp  its thumbnail (bot.gallery.thumbs)
    /static/gallery.css       the style sheet (the pages have no JavaScript)

What is shown follows one rule (bot.gallery.catalog): anything else answers 404, the same page whatever the reason,
so the gallery does not tell a hidden or private job from one that never existed. A query parameter out of its
bounds answers 400 with a sentence naming it and what it takes; a query string longer than MAX_QUERY_STRING is
refused whole.

Every response carries a Content-Security-Policy that allows nothing but the gallery's own images and style sheet
(no scripts, no frames, forms only to itself), `X-Content-Type-Options: nosniff`, `Referrer-Policy: no-referrer`
and `X-Frame-Options: DENY`. Templates are autoescaped (every template, whatever its name), so a prompt or a name
is always text. Images and thumbnails carry their sha256 as ETag with `Cache-Control: no-cache`: a browser asks
again each time (and gets 304 Not Modified), so a job hidden or deleted disappears at once, also from caches.

Handlers never block the event loop they share with the bot: database reads go through aiosqlite, files are read,
checked, stripped and scaled in worker threads.
"""

from __future__ import annotations

import asyncio
import logging
import re
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import jinja2
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import Message, Receive, Scope, Send

from bot.gallery.catalog import (
    MAX_PAGE,
    MAX_QUERY_CHARS,
    PAGE_SIZE,
    BadQuery,
    ChannelCheck,
    Filters,
    GalleryCatalog,
    GalleryImage,
    GalleryJob,
    parse_filters,
    styles_supported,
)
from bot.gallery.thumbs import THUMB_SIDE, ThumbnailCache, thumbnail_size
from bot.services.images import ImageDamaged, ImageStore

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
#: Longest query string a page takes, in characters.
MAX_QUERY_STRING = 1024
#: Full-size images read and checked at the same time (each in a worker thread).
IMAGE_READERS = 4

#: The headers every response gets (see the module's docstring).
SECURITY_HEADERS = {
    "content-security-policy": ("default-src 'none'; img-src 'self'; style-src 'self'; form-action 'self'; "
                                "base-uri 'none'; frame-ancestors 'none'"),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cross-origin-opener-policy": "same-origin",
}

MemberName = Callable[[int, int], "str | None"]

_ID = re.compile(r"^[0-9]{1,19}$")
_IMAGE_NAME = re.compile(r"^([0-9]{1,2})\.(png|webp)$")
#: PNG chunks that carry text (the A1111 `parameters` chunk with the prompt) or the time: left out of served images.
_TEXT_CHUNKS = {b"tEXt", b"zTXt", b"iTXt", b"eXIf", b"tIME"}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class SecurityHeaders:
    """ASGI middleware: SECURITY_HEADERS on every HTTP response, errors included."""

    def __init__(self, app: Starlette):
        self.app = app
        #: The wrapped app's state (the gallery keeps its catalog and thumbnail cache there).
        self.state = app.state
        self.headers = [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers", [])}
                message["headers"] = list(message.get("headers", [])) + [
                    (k, v) for k, v in self.headers if k not in present]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def without_text_chunks(png: bytes) -> bytes:
    """`png` without its text, EXIF and time chunks, read chunk by chunk (nothing is decoded, pixels stay as they
    are). Bytes that are not a well-formed PNG raise ValueError."""
    if not png.startswith(_PNG_SIGNATURE):
        raise ValueError("not a PNG file")
    out = [_PNG_SIGNATURE]
    pos = len(_PNG_SIGNATURE)
    while pos < len(png):
        if pos + 12 > len(png):
            raise ValueError("a PNG chunk is cut short")
        (length,) = struct.unpack(">I", png[pos:pos + 4])
        kind = png[pos + 4:pos + 8]
        end = pos + 12 + length
        if end > len(png):
            raise ValueError("a PNG chunk is cut short")
        if kind not in _TEXT_CHUNKS:
            out.append(png[pos:end])
        pos = end
        if kind == b"IEND":
            break
    return b"".join(out)


def _base_path(public_url: str | None) -> str:
    return urlsplit(public_url).path.rstrip("/") if public_url else ""


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC") if value is not None else ""


def create_app(
    services: Any,
    settings: Any,
    channel_is_public: ChannelCheck,
    *,
    member_name: MemberName | None = None,
) -> SecurityHeaders:
    """The gallery app over the bot's services (its database sessions and image store) and settings (the data
    folder, ALLOWED_GUILD_IDS, GALLERY_PUBLIC_URL). `channel_is_public(guild_id, channel_id)` says whether @everyone
    can view a channel; `member_name(guild_id, user_id)` gives a member's name when it is known (else the page
    shows the id). `app.state` holds the catalog and the thumbnail cache (`catalog`, `thumbs`)."""
    catalog = GalleryCatalog(services.sessions, channel_is_public=channel_is_public,
                             allowed_guild_ids=settings.allowed_guild_ids)
    images: ImageStore = services.images
    thumbs = ThumbnailCache(settings.data_dir, images)
    base = _base_path(settings.gallery_public_url)
    readers = asyncio.Semaphore(IMAGE_READERS)

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,  # every template, whatever its file name
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    templates = Jinja2Templates(env=env)

    def name_of(job: GalleryJob) -> str:
        name = None
        if member_name is not None:
            try:
                name = member_name(job.guild_id, job.user_id)
            except Exception:  # noqa: BLE001 - a name is a nicety
                name = None
        return name or f"member {job.user_id}"

    def link(filters: Filters, **changes: Any) -> str:
        query = filters.as_query(**changes)
        return f"{base}/" + (f"?{urlencode(query)}" if query else "")

    def thumb(img: GalleryImage) -> dict[str, Any]:
        w, h = thumbnail_size(img.width, img.height)
        return {"src": f"{base}/thumb/{img.job_id}/{img.index}.webp", "width": w, "height": h,
                "full": f"{base}/image/{img.job_id}/{img.index}.png"}

    env.globals.update(base=base, name_of=name_of, link=link, thumb=thumb, when=_when, page_size=PAGE_SIZE,
                       max_page=MAX_PAGE, max_query=MAX_QUERY_CHARS, styles=styles_supported(),
                       thumb_side=THUMB_SIDE)

    def render(request: Request, name: str, context: dict[str, Any], status: int = 200) -> Response:
        response = templates.TemplateResponse(request, name, context, status_code=status)
        response.headers["cache-control"] = "no-cache"
        return response

    def error_page(request: Request, status: int, message: str) -> Response:
        titles = {400: "Bad request", 404: "Not in the gallery", 405: "Method not allowed", 500: "Something went wrong"}
        return render(request, "error.html", {"status": status, "title": titles.get(status, "Error"),
                                              "message": message, "filters": Filters()}, status)

    def not_found(request: Request) -> Response:
        return error_page(request, 404, "Nothing is shown at this address: there is no such image in the gallery.")

    def check_query_string(request: Request) -> None:
        raw = request.scope.get("query_string", b"")
        if len(raw) > MAX_QUERY_STRING:
            raise BadQuery(f"The query string is {len(raw)} characters long, but at most {MAX_QUERY_STRING} are "
                           "allowed.")

    async def index(request: Request) -> Response:
        check_query_string(request)
        filters = parse_filters(request.query_params.multi_items())
        page = await catalog.page(filters)
        return render(request, "index.html", {"page": page, "filters": filters})

    def job_id_of(request: Request) -> int | None:
        text = request.path_params["job_id"]
        return int(text) if _ID.match(text) else None

    async def job_page(request: Request) -> Response:
        job_id = job_id_of(request)
        job = await catalog.job(job_id) if job_id is not None else None
        if job is None:
            return not_found(request)
        source = await catalog.job(job.source_job_id) if job.source_job_id else None
        return render(request, "job.html", {"job": job, "source": source, "filters": Filters()})

    async def shown_image(request: Request, suffix: str) -> GalleryImage | None:
        job_id = job_id_of(request)
        m = _IMAGE_NAME.match(request.path_params["name"])
        if job_id is None or m is None or m[2] != suffix:
            return None
        return await catalog.image(job_id, int(m[1]))

    def not_modified(request: Request, etag: str) -> Response | None:
        if etag in [t.strip() for t in request.headers.get("if-none-match", "").split(",")]:
            return Response(status_code=304, headers={"etag": etag, "cache-control": "no-cache"})
        return None

    async def image(request: Request) -> Response:
        img = await shown_image(request, "png")
        if img is None:
            return not_found(request)
        etag = f'"{img.sha256}"'
        if (cached := not_modified(request, etag)) is not None:
            return cached
        try:
            async with readers:
                data = await asyncio.to_thread(lambda: without_text_chunks(images.read(img.path, img.sha256)))
        except (OSError, ValueError) as exc:
            _log_unreadable(img, exc)
            return not_found(request)
        return Response(data, media_type="image/png", headers={"etag": etag, "cache-control": "no-cache"})

    async def thumbnail(request: Request) -> Response:
        img = await shown_image(request, "webp")
        if img is None:
            return not_found(request)
        etag = f'"{img.sha256[:16]}-{THUMB_SIDE}"'
        if (cached := not_modified(request, etag)) is not None:
            return cached
        try:
            data = await thumbs.get(img.job_id, img.index, img.path, img.sha256)
        except (OSError, ValueError) as exc:
            _log_unreadable(img, exc)
            return not_found(request)
        return Response(data, media_type="image/webp", headers={"etag": etag, "cache-control": "no-cache"})

    async def on_bad_query(request: Request, exc: Exception) -> Response:
        return error_page(request, 400, str(exc))

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404:
            return not_found(request)
        if exc.status_code == 405:
            response = error_page(request, 405, "The gallery only answers GET and HEAD.")
            response.headers["allow"] = "GET, HEAD"
            return response
        return error_page(request, exc.status_code, str(exc.detail))

    async def on_error(request: Request, exc: Exception) -> Response:
        log.exception("gallery: %s %s failed", request.method, request.url.path, exc_info=exc)
        return error_page(request, 500, "The gallery could not answer this request. Please try again later.")

    app = Starlette(
        routes=[
            Route("/", index, methods=["GET"]),
            Route("/job/{job_id}", job_page, methods=["GET"]),
            Route("/image/{job_id}/{name}", image, methods=["GET"]),
            Route("/thumb/{job_id}/{name}", thumbnail, methods=["GET"]),
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        ],
        exception_handlers={BadQuery: on_bad_query, HTTPException: on_http_error, 500: on_error},
    )
    app.state.catalog = catalog
    app.state.thumbs = thumbs
    # Outside Starlette's own error middleware, so that a 500 page gets the headers too.
    return SecurityHeaders(app)


def _log_unreadable(img: GalleryImage, exc: BaseException) -> None:
    if isinstance(exc, ImageDamaged):
        log.warning("gallery: image %d of job %d does not match its sha256; it is not shown", img.index, img.job_id)
    else:
        log.warning("gallery: image %d of job %d could not be read: %s", img.index, img.job_id, exc)
