"""bench/gpu.py in its CPU smoke mode, so the GPU benchmark keeps running between the times a GPU is lent."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(scope="module")
def gpu_bench():
    spec = importlib.util.spec_from_file_location("bench_gpu", BENCH / "gpu.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_gpu"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("bench_gpu", None)


@pytest.mark.slow
def test_smoke_run_writes_both_sections(gpu_bench, tmp_path):
    """--smoke runs plain and ours for both architectures on the CPU and writes a table section for each."""
    doc = tmp_path / "benchmarks.md"
    out = gpu_bench.main(["--smoke", "--out", str(doc), "--json", str(tmp_path / "gpu.json")])
    assert set(out["archs"]) == {"sd15", "sdxl"}
    for arch in out["archs"].values():
        rows = arch["result"]["rows"]
        assert [r["batch"] for r in rows] == [1, 2]
        assert all(r["plain"] > 0 and r["ours"] > 0 and r["stages"]["denoise"] > 0 for r in rows)
    text = doc.read_text()
    assert text.count("## GPU: tiny") == 2 and "| 2 |" in text and (tmp_path / "gpu.json").exists()


def test_sd15_flop_count_matches_the_issue(gpu_bench):
    """The published SD 1.5 UNet, counted on the meta device, does about 1.6 TFLOP per guided 512x512 step."""
    flops = gpu_bench.count_flops(gpu_bench.ARCHS["sd15"])
    assert round(flops["unet_params"] / 1e6) == 860
    assert flops["step_flop"] == pytest.approx(gpu_bench.ISSUE_SD15_STEP_FLOP, rel=0.02)


def test_merge_copies_gpu_sections(gpu_bench, tmp_path):
    """--merge copies the GPU sections of a fetched file into the doc, replacing old ones and keeping the rest."""
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n## Queue\n\nqueue text\n\n## GPU: SD 1.5 architecture\n\nold\n")
    fetched = tmp_path / "fetched.md"
    fetched.write_text("# Benchmarks\n\n## GPU: SD 1.5 architecture\n\nnew figures\n\n## GPU: SDXL architecture\n\nxl\n")
    gpu_bench.main(["--merge", str(fetched), "--out", str(doc)])
    text = doc.read_text()
    assert "queue text" in text and "new figures" in text and "xl" in text and "old" not in text
