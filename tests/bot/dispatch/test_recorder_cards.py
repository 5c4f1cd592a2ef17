"""An outpaint's canvas is checked against the card of the model the job ran on (announced to the registry), and
against every possible card only when that card is unknown."""

from __future__ import annotations

import hashlib

from bot.dispatch.dispatcher import Dispatcher
from bot.dispatch.recorder import MISMATCH, OutcomeRecorder, canvas_size, image_fits_job
from bot.dispatch.registry import WorkerRegistry
from generation.protocol.cards import ModelCard
from generation.protocol.contract import GenerationRequest
from generation.protocol.queue import Outcome, StoredImage, WorkerInfo, request_digest
from generation.protocol.signing import sign_outcome
from tests.bot.dispatch.test_recorder import World, assert_refused, edit_job, png, secret_of

#: Two cards that grow a 520 px square differently: pan_right makes 784x520 on a multiple of 8 and 832x576 on 64.
FINE = ModelCard(name="fine", architecture="sd1", max_side=1024, multiple=8)
COARSE = ModelCard(name="coarse", architecture="sd1", max_side=1024, multiple=64)


def pan(model: str = "") -> GenerationRequest:
    return GenerationRequest(prompt="grow", steps=4, width=520, height=520, num_images=1, mode="outpaint",
                             init_image=b"source", strength=1.0, outpaint="pan_right", model=model)


def outcome(w: World, job_id: int, req: GenerationRequest, size: tuple[int, int], model: str) -> Outcome:
    data = png(size, (job_id % 256, 0, 0))
    name = f"{job_id}/0.png"
    w.queue.objects[name] = data
    image = StoredImage(0, 100, name, len(data), hashlib.sha256(data).hexdigest())
    return sign_outcome(secret_of(job_id), Outcome(job_id, "succeeded", images=(image,), worker="w1", model=model,
                                                   request_digest=request_digest(req)))


def with_registry(*cards: ModelCard) -> World:
    w = World()
    registry = WorkerRegistry()
    registry.heard(WorkerInfo("w1", "fine", "fine", "ready", models=cards))
    w.recorder = OutcomeRecorder(lambda: w.queue, w.jobs, w.images, w.events, cards=registry.card)
    return w


def test_the_canvas_of_one_card_and_of_any_card():
    assert canvas_size("pan_right", 520, 520, FINE) == (784, 520)
    assert canvas_size("pan_right", 520, 520, COARSE) == (832, 576)
    assert canvas_size("square", 64, 64, FINE) is None and canvas_size("sideways", 64, 64, FINE) is None
    # Without a card both are possible canvases; with one, only its own.
    assert image_fits_job((832, 576), "outpaint", 520, 520, outpaint="pan_right")
    assert image_fits_job((784, 520), "outpaint", 520, 520, outpaint="pan_right")
    assert image_fits_job((784, 520), "outpaint", 520, 520, outpaint="pan_right", card=FINE)
    assert not image_fits_job((832, 576), "outpaint", 520, 520, outpaint="pan_right", card=FINE)
    assert not image_fits_job((784, 520), "outpaint", 520, 520, outpaint="pan_right", card=COARSE)


async def test_a_canvas_right_for_another_card_but_wrong_for_the_jobs_model_is_refused(caplog):
    w = with_registry(FINE)
    req = pan("fine")
    edit_job(w, 1, req)
    await assert_refused(w, 1, outcome(w, 1, req, (832, 576), "fine"), MISMATCH, caplog)
    edit_job(w, 2, req)
    assert await w.recorder.record(outcome(w, 2, req, (784, 520), "fine"))
    assert w.jobs.rows[2].status == "succeeded"


async def test_a_job_for_the_default_model_is_checked_against_the_model_the_outcome_names(caplog):
    w = with_registry(COARSE, FINE)
    req = pan()
    edit_job(w, 1, req)
    await assert_refused(w, 1, outcome(w, 1, req, (784, 520), "coarse"), MISMATCH, caplog)
    edit_job(w, 2, req)
    assert await w.recorder.record(outcome(w, 2, req, (832, 576), "coarse"))


async def test_an_unknown_card_falls_back_to_every_possible_canvas():
    """The worker stopped (its card is gone) before the bot read the outcome: any card's canvas is accepted."""
    w = with_registry(FINE)
    req = pan("retired")
    edit_job(w, 1, req)
    assert await w.recorder.record(outcome(w, 1, req, (832, 576), "retired"))
    assert w.jobs.rows[1].status == "succeeded"


def test_the_dispatcher_checks_outcomes_against_its_registrys_cards():
    from types import SimpleNamespace

    d = Dispatcher("nats://127.0.0.1:1", SimpleNamespace(), SimpleNamespace())
    d.registry.heard(WorkerInfo("w1", "fine", "fine", "ready", models=(FINE,)))
    assert d.recorder._card_of(pan("fine"), Outcome(1, "succeeded", worker="w1")) == FINE
    assert d.recorder._card_of(pan(), Outcome(1, "succeeded", worker="w1", model="fine")) == FINE
    assert d.recorder._card_of(pan("other"), Outcome(1, "succeeded", worker="w1", model="fine")) is None
