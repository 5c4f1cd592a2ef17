"""The image-editing job kinds through the queue: img2img, inpaint, outpaint, upscale and describe, with the fake
engine (what the bot's tests use) and with the real engine (the tiny model, an upscaler file given with
`--upscaler`), against a real nats-server. Outcomes are signed; a describe outcome carries its suggestions."""

from __future__ import annotations

import asyncio
import io
import os

import numpy as np
import pytest
from PIL import Image, ImageDraw

from generation.protocol.contract import GenerationRequest
from generation.protocol.queue import WorkerInfo
from generation.protocol.signing import outcome_verified
from generation.worker.fake_engine import FakeEngine, default_card, fake_upscaler
from generation.worker.settings import parse_args
from generation.worker.worker import Worker, batch_key, model_sources
from tests.support.natsutil import WorkerProcess, connect, nats_server_fixture, outcome_of  # noqa: F401
from tests.support.pictures import pixels, png_of

SECRET = b"s" * 32


def source_image(size=(64, 64)) -> Image.Image:
    im = Image.new("RGB", size, (30, 120, 200))
    ImageDraw.Draw(im).ellipse((8, 8, size[0] - 8, size[1] - 8), fill=(220, 40, 40))
    return im


def req(**fields) -> GenerationRequest:
    base = {"prompt": "a red circle", "seed": 4, "steps": 2, "width": 64, "height": 64, "num_images": 1,
            "init_image": png_of(source_image())}
    return GenerationRequest(**{**base, **fields})


async def run_jobs(nats_server, engine, jobs: dict[int, GenerationRequest]):
    """Publish `jobs` (signed with SECRET) to an in-process worker serving `engine`; their outcomes and images."""
    q = await connect(nats_server)
    wq = await connect(nats_server, name="w")
    worker = Worker(wq, lambda: engine, name="edit-worker", max_batch=4)
    for job_id, r in jobs.items():
        await q.publish_job(job_id, r, secret=SECRET)
    task = asyncio.create_task(worker.run())
    try:
        outcomes = {job_id: await outcome_of(q, job_id) for job_id in jobs}
        images = {job_id: [await q.get_object(img.object) for img in out.images] for job_id, out in outcomes.items()}
    finally:
        worker.request_stop(force=True)
        await asyncio.wait_for(task, 10)
        await wq.close()
        await q.close()
    return outcomes, images


async def test_the_fake_engine_runs_every_edit_kind_plausibly(nats_server):
    """img2img blends, inpaint changes only its region, outpaint grows the canvas, upscale resizes, describe
    returns suggestions (signed, no images): what the bot's tests will see from a fake worker."""
    src = np.asarray(source_image(), dtype=np.int16)
    jobs = {
        1: req(mode="img2img", strength=0.5),
        2: req(mode="inpaint", region="left", strength=1.0),
        3: req(mode="outpaint", outpaint="pan_right", strength=1.0),
        4: req(mode="upscale", strength=0.3),
        5: req(mode="describe", prompt="", init_image=png_of(Image.new("RGB", (80, 40), (230, 30, 30)))),
        6: req(mode="upscale", upscale_factor=4, strength=0.0),
    }
    outcomes, images = await run_jobs(nats_server, FakeEngine(0.0), jobs)
    assert all(o.status == "succeeded" and outcome_verified(SECRET, o) for o in outcomes.values())
    colour = np.array([(4 * 67) % 256, (4 * 131) % 256, (4 * 29) % 256])
    blend = pixels(images[1][0])
    assert np.abs(blend - (src + colour) / 2).max() <= 1
    inpainted = pixels(images[2][0])
    assert np.array_equal(inpainted[:, 32:], src[:, 32:]) and (inpainted[:, :32] == colour).all()
    grown = pixels(images[3][0])
    assert grown.shape == (64, 96, 3) and np.array_equal(grown[:, :64], src)
    assert pixels(images[4][0]).shape == (128, 128, 3) and pixels(images[6][0]).shape == (256, 256, 3)
    assert outcomes[5].images == () and len(outcomes[5].suggestions) == 4
    assert outcomes[5].suggestions[:2] == ("a red picture", "a wide red image, 80x40")


async def test_the_fake_engine_refuses_what_its_card_cannot(nats_server):
    """A fake model whose card has no captioner or inpainting fails such jobs at once, with the card's reason."""
    from dataclasses import replace

    engine = FakeEngine(0.0, card=replace(default_card("plain"), captioner="", inpainting=False))
    outcomes, _ = await run_jobs(nats_server, engine, {1: req(mode="describe"), 2: req(mode="inpaint",
                                                                                           region="centre")})
    assert outcomes[1].status == "failed" and "/describe is not available" in outcomes[1].error
    assert outcomes[2].status == "failed" and "cannot redraw part of an image" in outcomes[2].error
    assert outcomes[1].attempt == 1 and outcome_verified(SECRET, outcomes[1])


def test_edit_jobs_are_never_batched():
    assert batch_key(GenerationRequest("x", width=64, height=64)) is not None
    for r in (req(mode="img2img"), req(mode="inpaint", region="left"), req(mode="outpaint", outpaint="zoom_2"),
              req(mode="describe")):
        assert batch_key(r) is None


# --- settings and the fake worker's card ---------------------------------------------------------------------------


def test_upscaler_and_captioner_settings(tmp_path, monkeypatch, capsys):
    a, b = tmp_path / "4x-UltraSharp.pth", tmp_path / "x2.safetensors"
    a.write_bytes(b"x")
    b.write_bytes(b"x")
    s = parse_args(["--upscaler", str(a), "--upscaler", str(b), "--captioner", "Salesforce/blip-image-captioning"])
    assert s.upscalers == (a, b) and s.captioner == "Salesforce/blip-image-captioning"
    monkeypatch.setenv("WORKER_UPSCALERS", f"{a}, {b}")
    monkeypatch.setenv("WORKER_CAPTIONER", "/models/blip")
    s = parse_args([])
    assert s.upscalers == (a, b) and s.captioner == "/models/blip"
    with pytest.raises(SystemExit):
        parse_args(["--upscaler", str(tmp_path / "missing.pth")])
    err = capsys.readouterr().err
    assert "setting `upscalers` (--upscaler, env WORKER_UPSCALERS)" in err and "is not a file" in err


def test_a_fake_worker_announces_its_upscalers_and_captioner(tmp_path):
    up = tmp_path / "4x-UltraSharp.pth"
    up.write_bytes(b"not loaded by the fake engine")
    settings = parse_args(["--fake-engine", "0", "--upscaler", str(up), "--captioner", "org/blip"])
    card = model_sources(settings)[0].load().card
    assert [(u.name, u.scale) for u in card.upscalers] == [("4x-UltraSharp", 4)]
    assert card.captioner == "captioning model blip" and card.inpainting
    assert fake_upscaler("RealESRGAN_x2plus.pth").scale == 2
    plain = model_sources(parse_args(["--fake-engine", "0"]))[0].load().card
    assert plain.upscalers == () and plain.captioner == "fake captioner"


# --- the real engine ------------------------------------------------------------------------------------------------


async def test_real_engine_edit_jobs_through_the_queue(nats_server, engine):
    """Vary (Region), Zoom Out and an upscale without an upscaler (the old Lanczos + refine path) on the tiny model;
    describe without a captioner fails with the reason, at the first attempt."""
    src = np.asarray(source_image(), dtype=np.int16)
    jobs = {1: req(mode="inpaint", region="cells:0", feather=0, strength=1.0),
            2: req(mode="outpaint", outpaint="zoom_2", feather=0, strength=1.0),
            3: req(mode="upscale", strength=0.3),
            4: req(mode="describe", prompt="")}
    outcomes, images = await run_jobs(nats_server, engine, jobs)
    assert [outcomes[i].status for i in (1, 2, 3)] == ["succeeded"] * 3
    inpainted = pixels(images[1][0])
    mask = np.zeros((64, 64), bool)
    mask[:21, :21] = True
    assert np.array_equal(inpainted[~mask], src[~mask]) and not np.array_equal(inpainted[mask], src[mask])
    zoomed = pixels(images[2][0])
    assert zoomed.shape == (128, 128, 3) and np.array_equal(zoomed[32:96, 32:96], src)
    from generation.engine.pngmeta import parse_parameters, read_parameters

    fields = parse_parameters(read_parameters(images[3][0]))
    assert (fields["Size"], fields["Upscaler"]) == ("128x128", "Lanczos")
    assert outcomes[4].status == "failed" and "/describe is not available" in outcomes[4].error
    assert outcomes[4].attempt == 1


@pytest.mark.slow
async def test_a_worker_process_with_an_upscaler_file_doubles_with_it(nats_server, tiny_model_dir, tmp_path):
    """`python -m generation.worker --model DIR --upscaler FILE`: the card lists the upscaler, an upscale job runs
    it (the PNG names it) and doubles the size."""
    from generation.engine.pngmeta import parse_parameters, read_parameters
    from tests.support.tinymodels import build_tiny_esrgan

    up = build_tiny_esrgan(tmp_path / "tiny-esrgan-x2.safetensors")
    w = WorkerProcess(nats_server.url, tmp_path, "up", "--model", str(tiny_model_dir), "--device", "cpu",
                      "--upscaler", str(up), "--threads", "1",
                      env={"HF_HUB_OFFLINE": "1", "PATH": os.environ.get("PATH", "")})
    q = await connect(nats_server)
    infos: list[WorkerInfo] = []

    async def on_info(info: WorkerInfo) -> None:
        infos.append(info)

    await q.subscribe_workers(on_info)
    try:
        w.wait_for("ready", timeout=120)
        await q.publish_job(1, req(mode="upscale", strength=0.0), secret=SECRET)
        out = await outcome_of(q, 1, timeout=60)
        assert out.status == "succeeded" and outcome_verified(SECRET, out)
        png = await q.get_object(out.images[0].object)
        assert Image.open(io.BytesIO(png)).size == (128, 128)
        assert parse_parameters(read_parameters(png))["Upscaler"] == "tiny-esrgan-x2"
        await q.ping_workers()
        for _ in range(100):
            if any(i.models for i in infos):
                break
            await asyncio.sleep(0.05)
        card = next(i for i in reversed(infos) if i.models).models[0]
        assert [(u.name, u.scale, u.architecture) for u in card.upscalers] == [("tiny-esrgan-x2", 2, "ESRGAN")]
        assert card.inpainting and card.captioner == ""
    finally:
        await q.close()
        assert w.stop() == 0
