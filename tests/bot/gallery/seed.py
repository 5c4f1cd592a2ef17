"""A seeded database for the gallery tests: posted jobs the gallery shows, and one of each kind it must never show.

Jobs go through the real services (create, start, succeed with image files, mark_posted), as the dispatcher and
the presenter take them. The images are small drawings of flat shapes (what the default model draws), each PNG with
an A1111 `parameters` text chunk holding its prompt, as the worker writes it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

from PIL import Image, ImageDraw, PngImagePlugin

GUILD = 1000
#: Channels @everyone can view (the fake `channel_is_public` says so), one private, one of a guild not allowed.
ART, STUDIO, PRIVATE = 2000, 2001, 3000
OTHER_GUILD, OTHER_CHANNEL = 5000, 5001
PUBLIC_CHANNELS = {ART, STUDIO, OTHER_CHANNEL}
ALICE, BOB, CAROL = 11, 12, 13
NAMES = {ALICE: "alice", BOB: "bob", CAROL: "carol"}

#: A prompt with markup: it must reach the page as text.
HOSTILE_PROMPT = '<script>alert("x")</script> a purple star & <b>bold</b> "quotes"'


def shape_png(prompt: str, background: tuple[int, int, int], color: tuple[int, int, int], shape: str,
              size: int = 320) -> bytes:
    """A flat shape on a plain background, with the prompt in its `parameters` chunk."""
    im = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(im)
    box = (size * 0.2, size * 0.2, size * 0.8, size * 0.8)
    if shape == "circle":
        draw.ellipse(box, fill=color)
    elif shape == "square":
        draw.rectangle(box, fill=color)
    elif shape == "triangle":
        draw.polygon([(size * 0.5, size * 0.15), (size * 0.85, size * 0.8), (size * 0.15, size * 0.8)], fill=color)
    else:  # a star
        import math

        points = []
        for k in range(10):
            r = size * (0.35 if k % 2 == 0 else 0.15)
            a = math.pi / 2 + k * math.pi / 5
            points.append((size / 2 + r * math.cos(a), size / 2 - r * math.sin(a)))
        draw.polygon(points, fill=color)
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", f"{prompt}\nSteps: 20, Seed: 1")
    out = io.BytesIO()
    im.save(out, format="PNG", pnginfo=info)
    return out.getvalue()


@dataclass
class Seeded:
    """The ids of the seeded jobs: `shown` newest first, `never` by the reason they must not appear."""

    shown: list[int] = field(default_factory=list)
    never: dict[str, int] = field(default_factory=dict)
    by_name: dict[str, int] = field(default_factory=dict)
    #: A word of the prompt of each never-shown job, found in no shown prompt.
    never_words: dict[str, str] = field(default_factory=dict)


async def posted_job(services, *, guild=GUILD, channel=ART, user=ALICE, prompt: str, negative: str = "",
                     model: str = "shapes", shapes=(("circle", (30, 60, 160), (220, 40, 40)),), nsfw=(),
                     message_id: int | None = None, post: bool = True, **params) -> int:
    """A job taken through the services to `posted` in `channel`; returns its id."""
    job = await services.jobs.create(guild, channel, user, [], prompt=prompt, negative_prompt=negative, model=model,
                                     num_images=len(shapes), width=320, height=320, steps=20, seed=1234, **params)
    if not post:
        return job.id
    await services.jobs.start(job.id, worker="test")
    new = []
    for i, (shape, background, color) in enumerate(shapes):
        stored = services.images.save(job.id, i, shape_png(prompt, background, color, shape))
        new.append((i, job.seed + i, stored.path, stored.sha256, i in nsfw))
    await services.jobs.succeed(job.id, new)
    assert await services.jobs.mark_posted(job.id, channel, message_id or 900_000 + job.id)
    return job.id


async def seed(services, gallery_hidden=None) -> Seeded:
    """Seed the database of `services`. `gallery_hidden(guild, job_id)` hides a job (the catalog's set_hidden);
    without it the hidden job is hidden by SQL."""
    s = Seeded()
    red = await posted_job(services, prompt="a red circle on a blue background", negative="blurry, text",
                           shapes=(("circle", (30, 60, 160), (220, 40, 40)), ("circle", (20, 40, 120), (240, 80, 60))))
    s.by_name["red"] = red
    s.by_name["green"] = await posted_job(services, user=BOB, prompt="a green square in a café, flat colours",
                                          shapes=(("square", (240, 230, 210), (40, 160, 70)),))
    s.by_name["yellow"] = await posted_job(services, channel=STUDIO, prompt="a yellow triangle at sunset",
                                           model="tiny-sd", shapes=(("triangle", (250, 140, 80), (250, 220, 40)),))
    s.by_name["hostile"] = await posted_job(services, user=CAROL, prompt=HOSTILE_PROMPT,
                                            shapes=(("star", (20, 20, 30), (160, 80, 220)),))
    private = await posted_job(services, channel=PRIVATE, prompt="a secret violet moon",
                               shapes=(("circle", (10, 10, 40), (150, 90, 230)),))
    s.by_name["variation"] = await posted_job(
        services, user=BOB, prompt="a red circle, but brighter", mode="variation", source_job_id=private,
        source_image_index=0, shapes=(("circle", (40, 40, 60), (255, 70, 70)),))
    deleted = await posted_job(services, user=BOB, prompt="a deleted orange hexagon",
                               shapes=(("square", (60, 60, 60), (250, 150, 30)),))
    await services.jobs.mark_deleted(deleted)
    hidden = await posted_job(services, user=BOB, prompt="a hidden teal spiral",
                              shapes=(("circle", (60, 60, 60), (20, 180, 180)),))
    if gallery_hidden is not None:
        await gallery_hidden(GUILD, hidden)
    else:
        from sqlalchemy import update

        from bot.db.models import Job

        async with services.sessions() as session:
            await session.execute(update(Job).where(Job.id == hidden).values(gallery_hidden=True))
            await session.commit()
    flagged = await posted_job(services, user=CAROL, prompt="a flagged crimson blob", nsfw=(0,),
                               shapes=(("circle", (0, 0, 0), (200, 0, 40)),))
    foreign = await posted_job(services, guild=OTHER_GUILD, channel=OTHER_CHANNEL, prompt="a foreign silver cube",
                               shapes=(("square", (0, 0, 0), (190, 190, 190)),))
    queued = await posted_job(services, user=CAROL, prompt="a queued pink ring", post=False)
    s.never = {"private": private, "deleted": deleted, "hidden": hidden, "nsfw": flagged, "guild": foreign,
               "queued": queued}
    s.never_words = {"private": "violet", "deleted": "hexagon", "hidden": "spiral", "nsfw": "crimson",
                     "guild": "silver", "queued": "pink"}
    s.shown = sorted((v for k, v in s.by_name.items()), reverse=True)
    return s


#: More posted jobs for the browser test and its screenshot: (member, prompt, model, shape, background, colour).
MORE = [
    (CAROL, "a blue square on a sand background", "shapes", "square", (230, 210, 170), (40, 80, 200)),
    (ALICE, "a white star in a night sky", "shapes", "star", (15, 20, 50), (250, 250, 240)),
    (BOB, "two orange circles, soft light", "tiny-sd", "circle", (250, 240, 225), (240, 130, 30)),
    (CAROL, "a cyan triangle on a rose background", "shapes", "triangle", (245, 190, 205), (20, 150, 150)),
    (ALICE, "a golden star, flat colours", "shapes", "star", (60, 30, 80), (240, 190, 40)),
]


async def seed_more(services) -> list[int]:
    """MORE, posted in the public art channel; their ids."""
    return [await posted_job(services, user=user, prompt=prompt, model=model, shapes=((shape, bg, fg),))
            for user, prompt, model, shape, bg, fg in MORE]
