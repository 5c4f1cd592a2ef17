"""Loading one original-layout checkpoint file (.safetensors / .ckpt) offline, with its component configs: from a
folder named by `config=`, from one beside the file, or from the Hugging Face cache under the repository diffusers
picks for the architecture it reads off the checkpoint; and files that are no checkpoint, or of no text-to-image
model, refused with the reason."""

from __future__ import annotations

import shutil

import pytest

from generation.engine import Engine, ModelLoadError
from generation.engine.loading import checkpoint_kind, config_repo
from tests.support.tinymodels import put_in_hf_cache, save_single_file

#: The repository diffusers takes SD 1.x configs from (`single_file_utils.DIFFUSERS_DEFAULT_PIPELINE_PATHS["v1"]`).
SD1_CONFIGS = "stable-diffusion-v1-5/stable-diffusion-v1-5"


@pytest.fixture(autouse=True)
def _own_hf_cache(hf_cache):
    """Every test here sees an empty Hugging Face cache of its own (whatever the machine's holds), offline."""
    return hf_cache


@pytest.fixture(scope="module")
def single_file(tiny_model_dir, tmp_path_factory):
    """The tiny pipeline's weights as one LDM-layout .safetensors file (no config beside it)."""
    return save_single_file(tiny_model_dir, tmp_path_factory.mktemp("single") / "tiny.safetensors")


def _same_pixels(a: Engine, b: Engine, req) -> bool:
    return [i.png for i in a.generate(req).images] == [i.png for i in b.generate(req).images]


def test_safetensors_file_loads_with_config_folder(engine, tiny_model_dir, single_file, request_for):
    """A single .safetensors file plus a folder of component configs loads offline and draws the same pixels."""
    eng = Engine.load(single_file, device="cpu", config=tiny_model_dir)
    assert eng.name == "tiny"
    assert _same_pixels(eng, engine, request_for(num_images=1))


def test_ckpt_file_loads_with_config_folder(engine, tiny_model_dir, tmp_path, request_for):
    """A torch-pickle .ckpt with a `state_dict` loads the same way."""
    ckpt = save_single_file(tiny_model_dir, tmp_path / "tiny.ckpt")
    eng = Engine.load(ckpt, device="cpu", config=tiny_model_dir)
    assert _same_pixels(eng, engine, request_for(num_images=1))


def test_config_folder_beside_the_file_is_found(tiny_model_dir, single_file, tmp_path, request_for):
    """A config folder named like the file (without suffix) next to it is used without passing `config`."""
    file = tmp_path / "mymodel.safetensors"
    shutil.copy(single_file, file)
    shutil.copytree(tiny_model_dir, tmp_path / "mymodel")
    eng = Engine.load(file, device="cpu")
    assert eng.name == "mymodel"
    assert len(eng.generate(request_for(num_images=1)).images) == 1


def test_single_file_without_configs_fails_offline_with_advice(single_file):
    """Offline, a single file with no config folder raises an error that says how to supply one."""
    with pytest.raises(ModelLoadError, match="config=FOLDER"):
        Engine.load(single_file, device="cpu")


def test_single_file_takes_its_configs_from_the_hf_cache(engine, tiny_model_dir, single_file, hf_cache,
                                                         request_for):
    """With no config folder anywhere, the configs come from the Hugging Face cache, under the repository diffusers
    picks for the checkpoint's architecture (SD 1.x here), offline; only configs and tokenizers need be cached."""
    assert checkpoint_kind(single_file) == "v1" and config_repo("v1") == SD1_CONFIGS
    put_in_hf_cache(tiny_model_dir, SD1_CONFIGS, hf_cache, only=(".json", ".txt"))
    eng = Engine.load(single_file, device="cpu")
    assert (eng.name, eng.card.architecture, eng.card.pipeline) == ("tiny", "sd1", "StableDiffusionPipeline")
    assert _same_pixels(eng, engine, request_for(num_images=1))


def test_single_file_missing_from_the_hf_cache_names_the_repository(single_file, hf_cache):
    """The refusal names the architecture, the repository its configs come from, the cache, and three ways out."""
    with pytest.raises(ModelLoadError) as err:
        Engine.load(single_file, device="cpu")
    text = str(err.value)
    for part in ("`v1` checkpoint", SD1_CONFIGS, str(hf_cache), "HF_HUB_OFFLINE", "config=FOLDER",
                 f"huggingface-cli download {SD1_CONFIGS}"):
        assert part in text, part


@pytest.mark.parametrize(("name", "content"), [
    ("random.ckpt", bytes(range(256)) * 8),
    ("notes.safetensors", b"these are my notes, renamed by mistake\n" * 4),
    ("empty.safetensors", b""),
])
def test_a_file_that_is_no_checkpoint_is_refused_with_the_reason(tmp_path, tiny_model_dir, name, content):
    bad = tmp_path / name
    bad.write_bytes(content)
    for config in (None, tiny_model_dir):
        with pytest.raises(ModelLoadError, match=rf"`.*{name}` is not a model checkpoint that can be read \("):
            Engine.load(bad, device="cpu", config=config)


def test_a_checkpoint_of_no_whole_model_is_refused(tmp_path):
    """A LoRA, a VAE or a text encoder alone (tensors, but no UNet or transformer) is no model to serve."""
    import torch
    from safetensors.torch import save_file

    lora = tmp_path / "style-lora.safetensors"
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 32)}, str(lora))
    with pytest.raises(ModelLoadError, match="holds no whole text-to-image model.*LoRA"):
        Engine.load(lora, device="cpu")


def test_a_checkpoint_of_another_task_is_refused(tmp_path):
    """An inpainting UNet (9 input channels) is a checkpoint diffusers knows, but of no text-to-image model."""
    import torch
    from safetensors.torch import save_file

    inpaint = tmp_path / "inpaint.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(32, 9, 3, 3)}, str(inpaint))
    with pytest.raises(ModelLoadError, match="holds a `inpainting` checkpoint, which is not a text-to-image model"):
        Engine.load(inpaint, device="cpu")


def test_config_without_model_index_is_refused(single_file, tmp_path):
    """A `config` folder that is not a diffusers folder is refused, naming `config`."""
    with pytest.raises(ModelLoadError, match="`config`.*model_index.json"):
        Engine.load(single_file, device="cpu", config=tmp_path)


def test_corrupt_file_raises_a_load_error_naming_it(tmp_path, tiny_model_dir):
    """A .safetensors file that is not one raises ModelLoadError naming the file."""
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ModelLoadError, match="broken.safetensors"):
        Engine.load(bad, device="cpu", config=tiny_model_dir)
