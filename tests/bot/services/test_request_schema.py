"""GenerationRequest is the one declaration of a job's parameters.

The job service, the `job` table and `JobView` do not list the request's fields: a request class with one more field,
swapped in for the one name the service looks up, reaches the database and comes back on every view of the job with
nothing else changed. The rest checks the stored form (JSON without the init image) and the view's attributes.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import pickle
import sqlite3

import pytest

from bot.errors import InvalidRequest
from bot.services import jobs as jobs_module
from generation.protocol.contract import GenerationRequest, RequestError
from tests.bot.conftest import CHANNEL, GUILD

USER = 77
MOODS = ("", "watercolour", "ink")  # a made-up field: `style` is a real one (bot.services.styles)


def _validate_mood(self) -> None:
    GenerationRequest.validate(self)
    if self.mood not in MOODS:
        raise RequestError("mood", self.mood, f"it has to be one of {', '.join(map(repr, MOODS))}")


#: GenerationRequest with one more field (and a rule for it), declared only here.
MoodRequest = dataclasses.make_dataclass(
    "MoodRequest",
    [("mood", str, dataclasses.field(default=""))],
    bases=(GenerationRequest,),
    frozen=True,
    namespace={"validate": _validate_mood},
)


@pytest.fixture
def moody(monkeypatch):
    """The job service builds and reads requests of MoodRequest; nothing else is patched."""
    monkeypatch.setattr(jobs_module, "GenerationRequest", MoodRequest)


def _stored(db_path, job_id: int) -> dict:
    with sqlite3.connect(db_path) as conn:
        return json.loads(conn.execute("SELECT request FROM job WHERE id = ?", (job_id,)).fetchone()[0])


async def _finished(services, n: int = 2):
    job = await services.jobs.create(GUILD, CHANNEL, USER, [], prompt="a source", num_images=n)
    await services.jobs.start(job.id, worker="w")
    images = [(i, job.seed + i, *services.images.save(job.id, i, b"\x89PNG " + bytes([i]))) for i in range(n)]
    return await services.jobs.succeed(job.id, images)


# --- a new field needs no other change ---------------------------------------------------------------------------
async def test_a_field_added_to_the_request_reaches_the_stored_job(moody, services, db_path):
    """`create(mood=...)` stores the new field in the job's JSON; `get` gives it back on the request and the view."""
    job = await services.jobs.create(GUILD, CHANNEL, USER, [], prompt="a fox", num_images=1, mood="watercolour")
    assert _stored(db_path, job.id)["mood"] == "watercolour"
    got = await services.jobs.get(job.id)
    assert type(got.request) is MoodRequest
    assert (got.request.mood, got.mood, got.to_request().mood) == ("watercolour", "watercolour", "watercolour")
    assert got == job
    with sqlite3.connect(db_path) as conn:
        found = conn.execute("SELECT id FROM job WHERE json_extract(request, '$.mood') = 'watercolour'").fetchall()
    assert found == [(job.id,)]


async def test_a_new_field_is_on_every_view_of_the_job(moody, services):
    """history, queue, next_for_dispatch and unfinished all carry the new field."""
    job = await services.jobs.create(GUILD, CHANNEL, USER, [], prompt="a fox", num_images=1, mood="ink")
    views = [
        *(await services.jobs.history(GUILD, USER)),
        *(await services.jobs.queue()),
        *(await services.jobs.next_for_dispatch()),
        *(await services.jobs.unfinished()),
    ]
    assert len(views) == 4 and all(v.id == job.id and v.mood == "ink" for v in views)


async def test_a_new_field_takes_its_default_and_its_rule(moody, services):
    """Left out or None, the new field takes its default; a bad value is InvalidRequest naming it, nothing charged."""
    plain = await services.jobs.create(GUILD, CHANNEL, USER, [], prompt="a fox", num_images=1)
    none = await services.jobs.create(GUILD, CHANNEL, USER, [], prompt="a fox", num_images=1, mood=None)
    assert plain.mood == none.mood == ""
    used = (await services.quota.status(GUILD, USER, [])).used
    with pytest.raises(InvalidRequest, match="`mood` is 'oil'") as err:
        await services.jobs.create(GUILD, CHANNEL, USER, [], prompt="a fox", num_images=1, mood="oil")
    assert err.value.field == "mood"
    assert (await services.quota.status(GUILD, USER, [])).used == used


async def test_a_new_field_travels_with_a_variation(moody, services, db_path):
    """A variation keeps the new field; its init image is not stored and is added by `to_request`."""
    src = await _finished(services)
    var = await services.jobs.create(GUILD, CHANNEL, USER, [], mode="variation", prompt="again", source_job_id=src.id,
                                     source_image_index=1, mood="ink", num_images=1)
    stored = _stored(db_path, var.id)
    assert (stored["mood"], stored["mode"], stored["init_image"]) == ("ink", "variation", None)
    got = await services.jobs.get(var.id)
    assert (got.mood, got.mode, got.request.init_image) == ("ink", "variation", None)
    req = got.to_request(init_image=b"\x89PNG source")
    assert (type(req), req.mood, req.init_image) == (MoodRequest, "ink", b"\x89PNG source")


async def test_without_the_new_class_the_field_is_unknown(services):
    """The service accepts exactly the fields of the request class: `mood` is refused by the plain one."""
    with pytest.raises(TypeError, match="unexpected keyword argument 'mood'"):
        await services.jobs.create(GUILD, CHANNEL, USER, [], prompt="a fox", mood="ink")
    with pytest.raises(TypeError, match="unexpected keyword argument 'init_image'"):
        await services.jobs.create(GUILD, CHANNEL, USER, [], prompt="a fox", init_image=b"png")


# --- the stored form and the view --------------------------------------------------------------------------------
async def test_the_row_holds_the_request_json_without_the_image(services, db_path):
    """The `request` column is `to_json(with_image=False)` of the job's request, readable with json_extract."""
    job = await services.jobs.create(GUILD, CHANNEL, USER, [], prompt='a "cat" ü', seed=5, steps=12, num_images=2)
    with sqlite3.connect(db_path) as conn:
        text, steps, model = conn.execute(
            "SELECT request, json_extract(request, '$.steps'), model FROM job WHERE id = ?", (job.id,)
        ).fetchone()
    assert text == job.request.to_json(with_image=False) == GenerationRequest(
        'a "cat" ü', seed=5, steps=12, num_images=2
    ).to_json()
    assert (steps, model) == (12, "")


async def test_view_shows_every_request_field_as_its_own(services):
    """Each field of the request reads as an attribute of the job; other names are still AttributeError."""
    job = await services.jobs.create(GUILD, CHANNEL, USER, [], prompt="a fox", guidance=7, num_images=1, model="m")
    for f in dataclasses.fields(GenerationRequest):
        assert getattr(job, f.name) == getattr(job.request, f.name)
    assert (job.model, job.guidance, type(job.guidance)) == ("m", 7.0, float)
    with pytest.raises(AttributeError, match="no attribute 'colour'"):
        _ = job.colour
    assert not hasattr(job, "to_json")
    assert copy.deepcopy(job) == job == pickle.loads(pickle.dumps(job))


async def test_none_takes_the_default_and_seed_none_draws_one(services):
    """Parameters given as None take the request's defaults; `seed=None` draws a seed."""
    job = await services.jobs.create(
        GUILD, CHANNEL, USER, [], prompt="a fox", negative_prompt=None, steps=None, width=None, seed=None,
        scheduler=None, num_images=1,
    )
    default = GenerationRequest("a fox")
    assert (job.negative_prompt, job.steps, job.width, job.scheduler) == (
        default.negative_prompt, default.steps, default.width, default.scheduler
    )
    assert 0 <= job.seed < 2**32


def test_stored_form_round_trips_without_the_image():
    """A variation read with `image_required=False` has no image; every other rule is still checked."""
    req = GenerationRequest("a cat", mode="upscale", init_image=b"png", strength=0.3, guidance=6)
    stored = req.to_json(with_image=False)
    assert json.loads(stored)["init_image"] is None
    back = GenerationRequest.from_json(stored, image_required=False)
    assert back.init_image is None and back.with_(init_image=b"png") == req
    with pytest.raises(RequestError, match="`init_image`"):
        GenerationRequest.from_json(stored)
    with pytest.raises(RequestError, match="`steps`"):
        GenerationRequest.from_dict({**json.loads(stored), "steps": 0}, image_required=False)
    with pytest.raises(RequestError, match="`colour`"):
        GenerationRequest.from_dict({**json.loads(stored), "colour": "red"}, image_required=False)


async def test_an_old_row_reads_back_after_the_rules_change(services, db_path):
    """A stored request is read without today's checks: a row with a retired sampler, a bound that was lowered, a
    field since removed and one since added still gives its job on every view (history, reconcile); making
    something new from it (`to_request`) checks it again and names the problem."""
    job = await services.jobs.create(GUILD, CHANNEL, USER, [], prompt="an old fox", num_images=1)
    stored = _stored(db_path, job.id)
    stored.update(scheduler="retired_sampler", steps=9999, colour="red")
    del stored["timeline"]
    with sqlite3.connect(db_path) as conn:
        conn.execute("UPDATE job SET request = ? WHERE id = ?", (json.dumps(stored), job.id))
    got = await services.jobs.get(job.id)
    assert (got.prompt, got.scheduler, got.steps, got.timeline) == ("an old fox", "retired_sampler", 9999, False)
    assert [v.id for v in await services.jobs.unfinished()] == [job.id]
    assert [v.id for v in await services.jobs.history(GUILD, USER)] == [job.id]
    with pytest.raises(RequestError) as info:
        got.to_request()
    assert info.value.field in ("steps", "scheduler")
