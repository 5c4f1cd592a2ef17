"""The bot's children (embedded nats-server, local worker) ask Linux for SIGTERM when the bot dies
(`generation.protocol.natsserver.child_process_kwargs`); a bot that died before the request took cannot send it."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys

import pytest

from generation.protocol.natsserver import _die_with_parent, child_process_kwargs

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


def test_a_child_whose_starter_died_before_it_asked_for_the_death_signal_exits_at_once():
    """The parent that forked it is not its parent any more (it died between the fork and the request, and the child
    was handed to another): the signal would never come, so the child exits as if it had, instead of running on."""
    not_the_parent = os.getpid() + 1
    p = subprocess.Popen(SLEEPER, preexec_fn=functools.partial(_die_with_parent, not_the_parent))
    try:
        assert p.wait(timeout=10) == 128 + signal.SIGTERM
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_a_child_of_a_living_parent_runs_in_its_own_session():
    p = subprocess.Popen(SLEEPER, **child_process_kwargs())
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            p.wait(timeout=0.5)
        assert os.getsid(p.pid) == p.pid  # its own session: a Ctrl-C in the terminal reaches the bot alone
    finally:
        p.kill()
        p.wait()
