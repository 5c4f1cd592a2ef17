"""What a job costs (bot.services.costs): pixels × steps the engine runs, relative to the model card's default image,
and the charge and refund of exactly that through the job service."""

from __future__ import annotations

import pytest

from bot.services.costs import default_job_units, format_credits, job_units, steps_run
from generation.protocol.cards import ModelCard
from generation.protocol.contract import GenerationRequest
from tests.bot.conftest import CHANNEL, GUILD

SD = ModelCard(name="sd", architecture="sd1", default_width=512, default_height=512, default_steps=20, max_steps=50,
               img2img=True, inpainting=True)
XL = ModelCard(name="xl", architecture="sdxl", default_width=1024, default_height=1024, default_steps=30,
               max_side=1536, max_steps=50, img2img=True)


def req(**kw) -> GenerationRequest:
    return GenerationRequest.from_dict({"prompt": "a red fox", "seed": 1, **kw}, image_required=False)


@pytest.mark.parametrize(
    ("request_fields", "card", "units"),
    [
        # One image at the card's defaults is one credit, whatever the model.
        ({"width": 512, "height": 512, "steps": 20, "num_images": 1}, SD, 100),
        ({"width": 1024, "height": 1024, "steps": 30, "num_images": 1}, XL, 100),
        # Four images, twice the steps, a quarter of the pixels.
        ({"width": 512, "height": 512, "steps": 20, "num_images": 4}, SD, 400),
        ({"width": 512, "height": 512, "steps": 40, "num_images": 1}, SD, 200),
        ({"width": 256, "height": 256, "steps": 20, "num_images": 1}, SD, 25),
        # 512×768 for 25 steps: 1.5 × 1.25 = 1.875 credits an image.
        ({"width": 512, "height": 768, "steps": 25, "num_images": 2}, SD, 375),
        # A small image on a big model is cheap; a big one on a small model dear.
        ({"width": 512, "height": 512, "steps": 30, "num_images": 1}, XL, 25),
        # A variation at strength 0.35 of 20 steps runs int(20 × 0.35) = 7 of them.
        ({"mode": "variation", "width": 512, "height": 512, "steps": 20, "strength": 0.35, "num_images": 4}, SD, 140),
        # An upscale holds its source's size; it draws factor² the pixels for int(20 × 0.3) = 6 steps (its
        # strength is capped at STRENGTH_UPSCALE): 4 × 6/20 = 1.2 credits; 4×: 16 × 0.3 = 4.8.
        ({"mode": "upscale", "width": 512, "height": 512, "steps": 20, "strength": 0.3, "num_images": 1}, SD, 120),
        ({"mode": "upscale", "width": 512, "height": 512, "steps": 20, "strength": 0.9, "upscale_factor": 4,
          "num_images": 1}, SD, 480),
        # Without a refine pass (strength 0) an upscale runs no denoising step: the minimum charge.
        ({"mode": "upscale", "width": 512, "height": 512, "steps": 20, "strength": 0.0, "num_images": 1}, SD, 1),
        # An outpaint holds its source's size and draws its grown canvas: zoom_2 of 512² is 1024², 4 credits on SD;
        # on XL that is its default size, for 20 of its 30 steps: 0.67.
        ({"mode": "outpaint", "outpaint": "zoom_2", "width": 512, "height": 512, "steps": 20, "strength": 1.0,
          "num_images": 1}, SD, 400),
        ({"mode": "outpaint", "outpaint": "zoom_2", "width": 512, "height": 512, "steps": 20, "strength": 1.0,
          "num_images": 1}, XL, 67),
        # An inpaint denoises the whole picture at its strength.
        ({"mode": "inpaint", "region": "left", "width": 512, "height": 512, "steps": 20, "strength": 1.0,
          "num_images": 1}, SD, 100),
        # A hires fix: the first pass at 1/4 of the pixels, then the full size at 0.4 strength: 0.25 + 0.4.
        ({"width": 512, "height": 512, "steps": 20, "hires": 2.0, "num_images": 1}, SD, 65),
        # describe: a fixed quarter credit.
        ({"mode": "describe", "prompt": "", "num_images": 1}, SD, 25),
    ],
)
def test_job_units_follow_the_work(request_fields, card, units):
    assert job_units(req(**request_fields), card) == units


def test_steps_run_match_the_engine():
    """The steps counted are those the engine runs (it asks for at least 1/strength so that one runs)."""
    assert steps_run(req(steps=20)) == 20
    assert steps_run(req(mode="variation", steps=20, strength=0.7)) == 14
    assert steps_run(req(mode="variation", steps=2, strength=0.35)) == 1
    assert steps_run(req(mode="upscale", steps=20, strength=0.9)) == 6


def test_a_default_job_costs_four_credits_on_every_model():
    assert default_job_units(SD) == default_job_units(XL) == 400
    assert [format_credits(u) for u in (400, 250, 25, 1, 0, 12345)] == ["4", "2.5", "0.25", "0.01", "0", "123.45"]


async def test_create_charges_the_cost_and_a_failure_refunds_exactly_it(services):
    """Jobs of different sizes, steps and modes are charged their units on create; a failed or cancelled one gives
    back exactly its units, a succeeded one keeps them."""
    quota = services.quota
    a = await services.jobs.create(GUILD, CHANNEL, 7, [], prompt="a", width=512, height=768, steps=25, num_images=2,
                                   card=SD, check=SD.check)
    b = await services.jobs.create(GUILD, CHANNEL, 7, [], prompt="b", width=256, height=256, steps=10, num_images=1,
                                   card=SD, check=SD.check)
    assert (a.cost, b.cost, a.lane, b.lane) == (375, 13, 0, 0)  # 0.125 credits rounds up to 13 units
    assert (await quota.status(GUILD, 7, [])).used == 388
    await services.jobs.start(a.id)
    await services.jobs.succeed(a.id, [])
    await services.jobs.fail(b.id, "the worker stopped")
    assert (await quota.status(GUILD, 7, [])).used == 375
    assert await quota.refund(b.id) is False  # once only
    assert (await quota.status(GUILD, 7, [])).used == 375


async def test_create_is_three_statements_on_the_fast_path_and_four_for_the_relax_lane(settings, engine, clock):
    """Issue #20: the create transaction (BEGIN IMMEDIATE … COMMIT) is one SELECT (limits and the cooldown), one upsert (the reservation) and
    one INSERT … RETURNING; the relax lane adds one upsert. Counted, not timed (bench/bot_scale.py times it)."""
    from sqlalchemy import event

    from bot.services import build_services

    services = build_services(settings.model_copy(update={"default_relax_credits_per_day": 10}), engine, clock=clock)
    statements: list[str] = []

    def captured(conn, cursor, statement, *args) -> None:
        statements.append(statement.split()[0].upper())

    event.listen(engine.sync_engine, "before_cursor_execute", captured)
    try:
        fast = await services.jobs.create(GUILD, CHANNEL, 7, [1, 2], prompt="a", cost=1900, cooldown=3.0)
        assert statements == ["BEGIN", "SELECT", "INSERT", "INSERT"] and fast.lane == 0
        statements.clear()
        clock.advance(seconds=5)
        relax = await services.jobs.create(GUILD, CHANNEL, 7, [1, 2], prompt="b", cost=200, cooldown=3.0)
        assert statements == ["BEGIN", "SELECT", "INSERT", "INSERT", "INSERT"] and relax.lane == 1
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", captured)
