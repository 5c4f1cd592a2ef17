"""Fixtures of the hardening suite (see tests/support/reliability.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.natsutil import nats_server_fixture  # noqa: F401
from tests.support.reliability import Recorder


@pytest.fixture
def reliability(request) -> Recorder:
    out = os.environ.get("RELIABILITY_OUT")
    return Recorder(request.node.nodeid, Path(out) if out else None)
