"""`python -m generation`: the engine from a terminal, on the tiny model."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest
from PIL import Image

from generation.engine.cli import main


@pytest.fixture
def run_cli(tiny_model_dir, capsys):
    def run(*args: str) -> tuple[int, str, str]:
        code = main([*args, "--model", str(tiny_model_dir), "--quiet"])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


def test_cli_writes_a_png_with_parameters(run_cli, tmp_path):
    """One image is written to --out with its generation parameters."""
    out = tmp_path / "out.png"
    code, stdout, _ = run_cli("a red circle on a white background", "--seed", "1", "--steps", "2", "--out", str(out))
    assert code == 0
    im = Image.open(out)
    assert im.size == (64, 64)
    assert "Seed: 1" in im.info["parameters"]
    assert "seeds 1" in stdout


def test_cli_grid_and_timeline(run_cli, tmp_path):
    """Several images make a grid plus one file each, and --timeline writes an animation beside them."""
    out = tmp_path / "grid.png"
    code, _, _ = run_cli("a blue square", "--seed", "3", "--steps", "2", "--num-images", "4", "--timeline",
                         "--scheduler", "euler_a", "--guidance", "5", "--out", str(out))
    assert code == 0
    assert Image.open(out).size == (128, 128)
    assert sorted(p.name for p in tmp_path.glob("grid-[0-9].png")) == [f"grid-{i}.png" for i in range(1, 5)]
    timeline = next(tmp_path.glob("grid-timeline.*"))
    anim = Image.open(timeline)
    assert (anim.format, anim.size) in {("WEBP", (128, 128)), ("GIF", (128, 128))}


def test_cli_variation_and_upscale_from_a_file(run_cli, tmp_path):
    """--mode variation and --mode upscale read --init and write the new image."""
    src = tmp_path / "src.png"
    assert run_cli("a cat", "--seed", "1", "--steps", "2", "--out", str(src))[0] == 0
    var, up = tmp_path / "var.png", tmp_path / "up.png"
    assert run_cli("a cat", "--mode", "variation", "--init", str(src), "--strength", "0.7", "--steps", "2",
                   "--out", str(var))[0] == 0
    assert run_cli("a cat", "--mode", "upscale", "--init", str(src), "--steps", "2", "--out", str(up))[0] == 0
    assert Image.open(var).size == (64, 64)
    assert Image.open(up).size == (128, 128)


def test_cli_edits_an_image_and_describes_without_a_captioner(run_cli, tmp_path):
    """--mode inpaint / outpaint / upscale with --upscaler write the edited image; --mode describe on a model
    without a captioner exits 2 saying /describe is not available."""
    from tests.support.tinymodels import build_tiny_esrgan

    src = tmp_path / "src.png"
    assert run_cli("a cat", "--seed", "1", "--steps", "2", "--out", str(src))[0] == 0
    region, wide, big = tmp_path / "region.png", tmp_path / "wide.png", tmp_path / "big.png"
    assert run_cli("a cat", "--mode", "inpaint", "--init", str(src), "--region", "left", "--feather", "0",
                   "--strength", "1", "--steps", "2", "--out", str(region))[0] == 0
    assert Image.open(region).crop((32, 0, 64, 64)).tobytes() == Image.open(src).crop((32, 0, 64, 64)).tobytes()
    assert run_cli("", "--mode", "outpaint", "--init", str(src), "--outpaint", "pan_left", "--strength", "1",
                   "--steps", "2", "--out", str(wide))[0] == 0
    assert Image.open(wide).size == (96, 64)
    esrgan = build_tiny_esrgan(tmp_path / "x2.safetensors")
    assert run_cli("", "--mode", "upscale", "--init", str(src), "--upscaler", str(esrgan), "--strength", "0",
                   "--upscale-factor", "4", "--out", str(big))[0] == 0
    assert Image.open(big).size == (256, 256) and "Upscaler: x2" in Image.open(big).info["parameters"]
    code, _, err = run_cli("", "--mode", "describe", "--init", str(src))
    assert code == 2 and "/describe is not available" in err


def test_cli_guidance_grid(run_cli, tmp_path):
    """--guidance-grid writes one image per scale side by side."""
    out = tmp_path / "cfg.png"
    code, _, _ = run_cli("a star", "--steps", "2", "--guidance-grid", "1,7.5", "--out", str(out))
    assert code == 0
    assert Image.open(io.BytesIO(out.read_bytes())).width == 128


def test_cli_bad_size_exits_2_naming_the_option(run_cli, tmp_path):
    """A width the contract refuses exits with status 2 and a message naming `width`."""
    code, _, err = run_cli("a cat", "--width", "100", "--out", str(tmp_path / "x.png"))
    assert code == 2
    assert "`width` is 100" in err


def test_cli_size_beyond_the_model_exits_2(run_cli, tmp_path):
    """A width beyond the loaded model's range exits with status 2 and the allowed range."""
    code, _, err = run_cli("a cat", "--width", "512", "--out", str(tmp_path / "x.png"))
    assert code == 2
    assert "64 to 128" in err


def test_cli_missing_model_names_the_path(tmp_path, capsys):
    """A missing model path exits with status 2 and names the path."""
    code = main(["a cat", "--model", str(tmp_path / "no-model"), "--out", str(tmp_path / "x.png")])
    assert code == 2
    assert "no-model" in capsys.readouterr().err


def test_cli_help_runs_as_a_module():
    """`python -m generation --help` works and lists the options."""
    out = subprocess.run([sys.executable, "-m", "generation", "--help"], capture_output=True, text=True, check=True)
    assert "--guidance-grid" in out.stdout and "--timeline" in out.stdout


def test_cli_hub_id_missing_offline_exits_2_saying_how_to_fetch_it(hf_cache, tmp_path, capsys):
    """`--model org/name` is a Hugging Face model id; offline and not cached, it exits 2 saying how to fetch it."""
    code = main(["a cat", "--model", "absent-org/absent-model", "--out", str(tmp_path / "x.png")])
    assert code == 2
    assert "huggingface-cli download absent-org/absent-model" in capsys.readouterr().err
