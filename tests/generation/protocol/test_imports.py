"""Which package may import which (docs/architecture.md): the protocol and the bot stay torch-free.

Each check runs in a fresh interpreter, so what an earlier test imported cannot hide an import."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support.natsutil import REPO

HEAVY = ("torch", "diffusers", "transformers")
PROBE = """
import importlib, json, pkgutil, sys
names = []
for root in {roots!r}:
    pkg = importlib.import_module(root)
    names.append(root)
    for info in pkgutil.walk_packages(pkg.__path__, root + "."):
        if any(info.name.startswith(skip) for skip in {skip!r}):
            continue
        importlib.import_module(info.name)
        names.append(info.name)
print(json.dumps({{"imported": names, "modules": sorted(m.split(".")[0] for m in sys.modules)}}))
"""


def _import_all(roots: tuple[str, ...], skip: tuple[str, ...] = ()) -> tuple[list[str], set[str]]:
    """Import every module under `roots` in a new interpreter; (modules imported, top-level packages loaded)."""
    code = PROBE.format(roots=list(roots), skip=list(skip))
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    found = json.loads(out.stdout.strip().splitlines()[-1])
    return found["imported"], set(found["modules"])


def test_protocol_imports_no_torch_diffusers_or_discord():
    """Every module of generation.protocol imports neither torch, diffusers, transformers, discord nor the database."""
    imported, loaded = _import_all(("generation.protocol",))
    assert {"generation.protocol.contract", "generation.protocol.queue", "generation.protocol.natsserver"} <= set(imported)
    assert not loaded & {*HEAVY, "discord", "sqlalchemy"}, loaded & {*HEAVY, "discord", "sqlalchemy"}


def test_bot_imports_no_torch():
    """Every module of the bot (extensions, services, dispatch) loads without torch, diffusers or transformers."""
    imported, loaded = _import_all(("bot",), skip=("bot.__main__",))
    assert {"bot.app", "bot.dispatch.dispatcher", "bot.exts.imagine.cog", "bot.services.jobs"} <= set(imported)
    assert not loaded & set(HEAVY), loaded & set(HEAVY)


@pytest.mark.parametrize("package", ["generation", "generation.engine", "generation.worker", "generation.shapes"])
def test_generation_package_roots_are_cheap(package):
    """Importing a generation package (not its modules) loads no torch: the worker and the CLI start fast."""
    _, loaded = _import_all((package,), skip=(f"{package}.",) if package != "generation" else ("generation.",))
    assert not loaded & set(HEAVY), loaded & set(HEAVY)


def test_generation_never_imports_discord_or_the_database():
    """No module of generation/ (engine, worker, shapes included) imports discord or sqlalchemy."""
    imported, loaded = _import_all(("generation",))
    assert "generation.engine.engine" in imported and "generation.worker.worker" in imported
    assert not loaded & {"discord", "sqlalchemy"}, loaded & {"discord", "sqlalchemy"}
