"""Loading by Hugging Face Hub id (`org/name[@revision]`), from a Hugging Face cache the test lays out (offline), and
the errors a missing, gated or private repository gets. Nothing is downloaded: HF_HUB_OFFLINE is on throughout."""

from __future__ import annotations

import io
import json

import httpx2 as httpx
import pytest
from PIL import Image

from generation.engine import Engine, ModelLoadError, loading
from tests.support.tinymodels import build_tiny_pipeline, put_in_hf_cache


def _pixels(engine: Engine, req) -> list[bytes]:
    return [Image.open(io.BytesIO(i.png)).tobytes() for i in engine.generate(req).images]


def test_hub_id_loads_from_the_cache_offline(hf_cache, tiny_model_dir, engine, request_for):
    """`org/name` that the cache holds loads with HF_HUB_OFFLINE set, named after the repository, same pixels."""
    put_in_hf_cache(tiny_model_dir, "tiny-org/tiny-sd", hf_cache)
    eng = Engine.load("tiny-org/tiny-sd", device="cpu")
    assert eng.name == "tiny-sd" and eng.source == "tiny-org/tiny-sd" and eng.path is None
    assert (eng.card.pipeline, eng.card.architecture) == ("StableDiffusionPipeline", "sd1")
    req = request_for(num_images=1)
    assert _pixels(eng, req) == _pixels(engine, req)


def test_hub_revision_and_the_repos_own_settings(hf_cache, tiny_model_dir, tmp_path):
    """`org/name@revision` loads the snapshot that revision points at; an `imaginebot.json` in it is read."""
    folder = tmp_path / "tagged"
    build_tiny_pipeline(folder, seed=1, info={"name": "tagged-model", "default_steps": 9})
    put_in_hf_cache(tiny_model_dir, "tiny-org/tiny-sd", hf_cache)  # main: another model
    put_in_hf_cache(folder, "tiny-org/tiny-sd", hf_cache, revision="v2")
    eng = Engine.load("tiny-org/tiny-sd@v2", device="cpu")
    assert (eng.name, eng.card.default_steps) == ("tagged-model", 9)
    assert Engine.load("tiny-org/tiny-sd", device="cpu", name="main-one").name == "main-one"


def test_hub_weights_variant(hf_cache, tmp_path, request_for):
    """`variant="fp16"` loads the repository's `*.fp16.safetensors` weights."""
    import torch

    folder = tmp_path / "variant"
    pipe = build_tiny_pipeline(seed=2)
    pipe.to(torch.float16).save_pretrained(folder, variant="fp16")
    put_in_hf_cache(folder, "tiny-org/tiny-fp16", hf_cache)
    eng = Engine.load("tiny-org/tiny-fp16", device="cpu", dtype=torch.float32, variant="fp16")
    assert eng.pipe.unet.dtype == torch.float32
    assert len(eng.generate(request_for(num_images=1)).images) == 1


def test_hub_id_missing_from_the_cache_offline_says_how_to_fetch_it(hf_cache):
    """Offline, a Hub id the cache lacks is refused: not in the cache, HF_HUB_OFFLINE, and how to fetch it."""
    with pytest.raises(ModelLoadError) as err:
        Engine.load("absent-org/absent-model", device="cpu")
    text = str(err.value)
    assert "`absent-org/absent-model` is not in the Hugging Face cache" in text and str(hf_cache) in text
    assert "HF_HUB_OFFLINE" in text and "huggingface-cli download absent-org/absent-model" in text


def test_hub_revision_missing_offline_names_the_revision(hf_cache, tiny_model_dir):
    put_in_hf_cache(tiny_model_dir, "tiny-org/tiny-sd", hf_cache)
    with pytest.raises(ModelLoadError, match=r"tiny-org/tiny-sd@nope.*--revision nope"):
        Engine.load("tiny-org/tiny-sd@nope", device="cpu")


def _http_error(kind, status: int):
    request = httpx.Request("GET", "https://huggingface.co/api/models/org/name")
    return kind("refused", response=httpx.Response(status, request=request))


@pytest.mark.parametrize(("source", "error", "expected"), [
    ("org/name", "GatedRepoError", r"gated repository.*huggingface.co/org/name.*HF_TOKEN"),
    ("org/name", "RepositoryNotFoundError", r"no repository `org/name`.*private repository.*HF_TOKEN"),
    ("org/name@v9", "RevisionNotFoundError", r"`org/name` has no revision `v9`"),
])
def test_hub_refusals_say_why(hf_cache, monkeypatch, source, error, expected):
    """Online, a gated or private repository without a token (as diffusers reports it: an OSError raised from the
    Hub's error) is refused naming HF_TOKEN; a missing revision is named."""
    from huggingface_hub import errors

    def refuse(*args, **kwargs):
        try:
            raise _http_error(getattr(errors, error), 401)
        except Exception as exc:
            raise OSError("Cannot load model org/name: the model is not fully cached locally") from exc

    monkeypatch.setattr(loading, "_offline", lambda: False)
    monkeypatch.setattr(loading, "read_hub_info", lambda *a: {})
    monkeypatch.setattr(loading, "_from_pretrained", refuse)
    with pytest.raises(ModelLoadError, match=expected):
        Engine.load(source, device="cpu")


def test_hub_unreachable_and_not_cached(hf_cache, monkeypatch):
    """Online but without a connection, a model the cache lacks is refused saying the Hub cannot be reached."""
    def refuse(*args, **kwargs):  # what diffusers raises: the cache miss, from the failed Hub call
        network = httpx.ConnectError("no route to host")
        try:
            raise FileNotFoundError("Cannot find an appropriate cached snapshot folder")
        except FileNotFoundError:
            raise OSError("Cannot load model org/name: the model is not fully cached locally") from network

    monkeypatch.setattr(loading, "_offline", lambda: False)
    monkeypatch.setattr(loading, "read_hub_info", lambda *a: {})
    monkeypatch.setattr(loading, "_from_pretrained", refuse)
    with pytest.raises(ModelLoadError, match=r"not in the Hugging Face cache .*cannot be reached"):
        Engine.load("org/name", device="cpu")


def test_a_local_path_that_looks_like_no_hub_id_keeps_its_error(tmp_path):
    """A path that does not exist and is no `org/name` is refused as a path, naming it."""
    for missing in (tmp_path / "nowhere", "./models/mine.safetensors", "just-a-name"):
        with pytest.raises(ModelLoadError, match=r"model path `.*` does not exist"):
            Engine.load(missing, device="cpu")


def test_a_repo_setting_file_that_is_not_json_is_reported(hf_cache, tiny_model_dir, tmp_path):
    folder = tmp_path / "bad-info"
    build_tiny_pipeline(folder)
    (folder / "imaginebot.json").write_text(json.dumps(["not", "an", "object"]))
    put_in_hf_cache(folder, "tiny-org/bad-info", hf_cache)
    with pytest.raises(ModelLoadError, match="imaginebot.json` has to hold a JSON object"):
        Engine.load("tiny-org/bad-info", device="cpu")
