"""LoRAs in the worker: `--lora-dir`/`--embedding-dir` reach the engine, a batch holds one set of LoRAs (jobs with
different ones are split, never mixed), and a worker with the real tiny engine announces its LoRAs and embeddings on
the card and runs a LoRA job, refusing one naming a LoRA it does not serve. Against a real nats-server."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from generation.protocol.cards import LoraInfo
from generation.protocol.contract import GenerationRequest
from generation.protocol.queue import WorkerInfo
from generation.worker.fake_engine import FakeEngine, default_card
from generation.worker.settings import parse_args
from generation.worker.worker import Worker, batch_key, model_sources
from tests.support.natsutil import connect, nats_server_fixture, outcome_of  # noqa: F401
from tests.support.tinyloras import save_diffusers_lora, save_embedding, unet_lora


def req(prompt: str, **kw) -> GenerationRequest:
    return GenerationRequest(prompt, **{"steps": 2, "width": 64, "height": 64, "num_images": 1, **kw})


# --- the batch key -------------------------------------------------------------------------------------------------
def test_the_batch_key_holds_the_loras_and_their_weights():
    """Same shape, different LoRAs or weights: different keys. The order and case of the tags do not matter, and
    a LoRA at weight 0 applies nothing, so it batches with plain jobs."""
    plain = batch_key(req("a cat"))
    ink = batch_key(req("a cat <lora:ink>"))
    assert ink != plain and ink != batch_key(req("a cat <lora:ink:0.5>"))
    assert batch_key(req("a dog <lora:pastel:0.5> <lora:INK>")) == batch_key(req("a cat <lora:ink:1> <lora:Pastel:.5>"))
    assert batch_key(req("a dog <lora:pastel:0.5> <lora:ink>")) != ink
    assert batch_key(req("a cat <lora:ink:0>")) == plain
    assert batch_key(req("a cat <lora:ink:3>")) is None  # refused by the check: it runs (and fails) alone


class RecordingEngine(FakeEngine):
    """A fake engine that records the prompts of every run it was given."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.batches: list[list[str]] = []

    def generate_many(self, reqs, on_progress=None, should_cancel=None):
        self.batches.append([r.prompt for r in reqs])
        return super().generate_many(reqs, on_progress, should_cancel)


async def test_a_batch_never_mixes_jobs_with_different_loras(nats_server):
    """Seven waiting same-shape jobs with three LoRA sets: the worker batches them, each batch with one set."""
    card = replace(default_card("fake"), loras=(LoraInfo("ink", "other"), LoraInfo("pastel", "other")))
    engine = RecordingEngine(0.001, card=card)
    prompts = ["a <lora:ink>", "b", "c <lora:ink:1>", "d <lora:pastel:0.5>", "e <lora:ink:0>", "f <lora:INK>",
               "g <lora:pastel:0.5>"]
    q = await connect(nats_server)
    wq = await connect(nats_server, name="w")
    for job_id, prompt in enumerate(prompts, 1):
        await q.publish_job(job_id, req(prompt))
    worker = Worker(wq, lambda: engine, name="lora-worker", max_batch=4)
    task = asyncio.create_task(worker.run())
    try:
        outs = [await outcome_of(q, job_id) for job_id in range(1, len(prompts) + 1)]
        assert [o.status for o in outs] == ["succeeded"] * len(prompts)
    finally:
        worker.request_stop(force=True)
        await asyncio.wait_for(task, 10)
        await wq.close()
        await q.close()
    ran = [p for batch in engine.batches for p in batch]
    assert sorted(ran) == sorted(prompts)
    for batch in engine.batches:
        assert len({batch_key(req(p)) for p in batch}) == 1, engine.batches
    assert any(len(batch) > 1 for batch in engine.batches)  # batching still happens


# --- the settings reach the engine ---------------------------------------------------------------------------------
def test_the_folders_are_given_to_every_model(tmp_path, monkeypatch):
    """`--lora-dir` and `--embedding-dir` go to `Engine.load` of each model; a folder that is not there is refused,
    naming the flag and its variable."""
    import generation.engine

    (tmp_path / "loras").mkdir()
    (tmp_path / "emb").mkdir()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    calls = []
    monkeypatch.setattr(generation.engine.Engine, "load", classmethod(lambda cls, source, **kw: calls.append(kw)))
    settings = parse_args(["--model", str(tmp_path / "a"), "--model", str(tmp_path / "b"),
                           "--lora-dir", str(tmp_path / "loras"), "--embedding-dir", str(tmp_path / "emb")])
    for source in model_sources(settings):
        source.load()
    assert [(c["lora_dir"], c["embedding_dir"]) for c in calls] == [(tmp_path / "loras", tmp_path / "emb")] * 2
    with pytest.raises(SystemExit):
        parse_args(["--lora-dir", str(tmp_path / "missing")])


def test_a_missing_folder_is_named(tmp_path, capsys):
    with pytest.raises(SystemExit):
        parse_args(["--embedding-dir", str(tmp_path / "missing")])
    err = capsys.readouterr().err
    assert "setting `embedding_dir` (--embedding-dir, env WORKER_EMBEDDING_DIR)" in err and "is not a folder" in err


# --- with the real engine ------------------------------------------------------------------------------------------
async def test_a_worker_announces_its_loras_and_runs_a_lora_job(nats_server, tiny_model_dir, tmp_path):
    """The card in the announcement lists the LoRA and the embedding; a job with the LoRA succeeds and its PNG
    names it, a job naming a LoRA the worker does not serve fails with the reason (no retry)."""
    from generation.engine import Engine
    from generation.engine.pngmeta import parse_parameters, read_parameters

    loras, embeddings = tmp_path / "loras", tmp_path / "embeddings"
    save_diffusers_lora(unet_lora(seed=1), loras / "ink.safetensors")
    save_embedding(embeddings / "shinystyle.safetensors")
    q = await connect(nats_server)
    wq = await connect(nats_server, name="w")
    infos: list[WorkerInfo] = []

    async def on_info(info: WorkerInfo) -> None:
        infos.append(info)

    await q.subscribe_workers(on_info)
    worker = Worker(wq, lambda: Engine.load(tiny_model_dir, device="cpu", lora_dir=loras, embedding_dir=embeddings),
                    name="tiny-lora", max_batch=4)
    task = asyncio.create_task(worker.run())
    try:
        await q.publish_job(1, req("a shinystyle circle <lora:ink:0.8>", seed=3))
        await q.publish_job(2, req("a red circle <lora:missing>", seed=3))
        await q.publish_job(3, req("a red circle", seed=3))
        ok, refused, plain = [await outcome_of(q, job_id) for job_id in (1, 2, 3)]
        assert ok.status == "succeeded" and plain.status == "succeeded"
        fields = parse_parameters(read_parameters(await q.get_object(ok.images[0].object)))
        assert fields["Lora hashes"].startswith("ink: ") and fields["TI hashes"].startswith("shinystyle: ")
        assert refused.status == "failed" and refused.attempt == 1
        assert "`tiny` has no LoRA named `missing`; its LoRAs are `ink`." in refused.error
        card = next(i for i in reversed(infos) if i.models).models[0]
        assert [(lora.name, lora.architecture) for lora in card.loras] == [("ink", "sd1")]
        assert card.embeddings == ("shinystyle",)
    finally:
        worker.request_stop(force=True)
        await asyncio.wait_for(task, 10)
        await wq.close()
        await q.close()
