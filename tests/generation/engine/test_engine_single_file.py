"""Loading one original-layout checkpoint file (.safetensors / .ckpt) offline, with its component configs."""

from __future__ import annotations

import shutil

import pytest

from generation.engine import Engine, ModelLoadError
from tests.support.tinymodels import save_single_file


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
