"""Answering within Discord's 3 seconds: slow work is deferred, and a late refusal does not stay public."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from bot.errors import NotArtChannel
from bot.exts.errors.handler import report_error
from bot.exts.imagine import flow


class StubResponse:
    def __init__(self):
        self.calls: list[tuple] = []
        self.texts: list[str] = []
        self._done = False

    def is_done(self) -> bool:
        return self._done

    async def defer(self, **kwargs):
        self.calls.append(("defer", kwargs))
        self._done = True

    async def send_message(self, *args, **kwargs):
        self.calls.append(("send_message", kwargs))
        self.texts.append(args[0] if args else kwargs.get("content"))
        self._done = True


@pytest.fixture(autouse=True)
def stub_deferral(monkeypatch):
    """The stub interactions have no HTTP behind them: `flow.send_deferral` goes to their response's `defer`."""

    async def send_deferral(interaction, *, ephemeral=False):
        await interaction.response.defer(thinking=True, ephemeral=ephemeral)

    monkeypatch.setattr(flow, "send_deferral", send_deferral)


def stub_interaction():
    calls: list[tuple] = []

    async def delete_original_response():
        calls.append(("delete_original",))

    async def edit_original_response(**kwargs):
        calls.append(("edit_original", kwargs))

    async def followup_send(content, **kwargs):
        calls.append(("followup", content, kwargs))

    return SimpleNamespace(
        id=1, user=SimpleNamespace(id=2), extras={}, response=StubResponse(), calls=calls, command=None, data={},
        delete_original_response=delete_original_response, edit_original_response=edit_original_response,
        followup=SimpleNamespace(send=followup_send),
    )


async def test_fast_work_is_not_deferred(monkeypatch):
    """Work done within the deadline leaves the interaction unanswered for the caller to answer."""
    monkeypatch.setattr(flow, "DEFER_AFTER", 0.2)
    interaction = stub_interaction()
    assert await flow.answer_in_time(interaction, asyncio.sleep(0, result=5)) == 5
    assert interaction.response.calls == []


async def test_slow_work_is_deferred_publicly(monkeypatch):
    """Work slower than the deadline gets a 'thinking' defer first, marked as public."""
    monkeypatch.setattr(flow, "DEFER_AFTER", 0.05)
    interaction = stub_interaction()
    assert await flow.answer_in_time(interaction, asyncio.sleep(0.2, result="ok")) == "ok"
    assert interaction.response.calls == [("defer", {"thinking": True, "ephemeral": False})]
    assert interaction.extras[flow.PUBLIC_DEFER]


async def test_refusal_after_public_defer_is_made_private():
    """A domain error after a public defer completes the thinking message (Discord would turn the first follow-up
    into it, public), answers in a private follow-up of its own, then deletes the public message."""
    interaction = stub_interaction()
    interaction.response._done = True
    interaction.extras[flow.PUBLIC_DEFER] = True
    await report_error(interaction, NotArtChannel([42]))
    assert interaction.calls[0][0] == "edit_original" and "<#42>" not in str(interaction.calls[0])
    kind, content, kwargs = interaction.calls[1]
    assert kind == "followup" and "<#42>" in content and kwargs["ephemeral"]
    assert interaction.calls[2] == ("delete_original",)


async def test_a_full_database_disk_is_explained_and_logged_as_an_error(caplog):
    """The member is told the disk is full and that nothing was charged; the moderators get an ERROR line."""
    import sqlite3

    from sqlalchemy.exc import OperationalError

    interaction = stub_interaction()
    full = OperationalError("INSERT INTO job ...", {}, sqlite3.OperationalError("database or disk is full"))
    with caplog.at_level("INFO", logger="bot.errors"):
        await report_error(interaction, full)
    kind, kwargs = interaction.response.calls[0]
    assert kind == "send_message" and kwargs["ephemeral"]
    assert "disk is full" in interaction.response.texts[0] and "Nothing was charged" in interaction.response.texts[0]
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "disk is full" in errors[0].getMessage()


async def test_defer_marks_a_public_deferral_and_does_not_defer_twice():
    """`defer` acknowledges with "thinking…" once; an answered interaction is left alone."""
    interaction = stub_interaction()
    await flow.defer(interaction)
    await flow.defer(interaction)
    assert interaction.response.calls == [("defer", {"thinking": True, "ephemeral": False})]
    assert interaction.extras[flow.PUBLIC_DEFER]


async def test_admissions_wait_for_the_deferrals_in_progress():
    """Acknowledgements first: an admission starts only when the deferrals going out are done (or after
    ACKS_FIRST_MAX)."""
    gate = flow.Admission(4)
    events = []
    sent = asyncio.Event()

    async def deferral():
        async with gate.deferring():
            await sent.wait()
            events.append("deferred")

    async def admit():
        async with gate.slot():
            events.append("admitted")

    tasks = [asyncio.create_task(deferral()), asyncio.create_task(admit())]
    await asyncio.sleep(0.05)
    assert events == []
    sent.set()
    await asyncio.gather(*tasks)
    assert events == ["deferred", "admitted"]


async def test_an_admission_waits_for_deferrals_at_most_acks_first_max_in_all(monkeypatch):
    """Under deferrals that never pause, an admission still goes on: its waits in one slot (at its turn and between
    its steps) come to ACKS_FIRST_MAX together, not each."""
    monkeypatch.setattr(flow, "ACKS_FIRST_MAX", 0.3)
    gate = flow.Admission(1)
    stop = asyncio.Event()

    async def endless():
        while not stop.is_set():
            async with gate.deferring():
                await asyncio.sleep(0.01)

    stream = asyncio.create_task(endless())
    await asyncio.sleep(0.02)  # the deferrals have begun
    loop = asyncio.get_running_loop()
    start = loop.time()
    async with gate.slot():
        entered = loop.time() - start
        await gate.acknowledgements_first()
        await gate.acknowledgements_first()
    total = loop.time() - start
    outside = loop.time()
    await gate.acknowledgements_first()  # outside a slot: a bound of its own
    alone = loop.time() - outside
    stop.set()
    await stream
    assert entered >= 0.25  # it did wait for the deferrals
    assert total < 0.6  # three waits of ACKS_FIRST_MAX each would be 0.9 s
    assert alone >= 0.25


async def test_admission_lets_a_few_in_at_a_time_and_says_when_it_is_busy():
    """The gate runs at most its slots' admissions together, in arrival order; it is busy while an interaction is
    being admitted or every slot is taken."""
    gate = flow.Admission(2)
    assert not gate.busy
    with gate.entering() as busy:
        assert not busy and gate.busy
        with gate.entering() as busy:
            assert busy
    assert not gate.busy
    inside, most, order = 0, 0, []
    release = asyncio.Event()

    async def admit(i):
        nonlocal inside, most
        async with gate.slot():
            inside += 1
            most = max(most, inside)
            order.append(i)
            await release.wait()
            inside -= 1

    tasks = [asyncio.create_task(admit(i)) for i in range(5)]
    await asyncio.sleep(0.01)
    assert gate.busy and order == [0, 1]
    release.set()
    await asyncio.gather(*tasks)
    assert most == 2 and order == [0, 1, 2, 3, 4] and not gate.busy


async def test_admitting_counts_an_interaction_once_and_defers_those_behind_it():
    """/imagine reads the member's defaults inside `admitting` and then calls start_job, which enters again: the
    inner block must not defer the interaction because of itself; another interaction arriving meanwhile is
    acknowledged at once."""
    client = SimpleNamespace()
    first, second = stub_interaction(), stub_interaction()
    first.client = second.client = client
    async with flow.admitting(first):
        assert flow.admission(client).busy
        async with flow.admitting(first):  # start_job inside /imagine
            pass
        assert first.response.calls == []  # not deferred because of itself
        async with flow.admitting(second):
            pass
        assert second.response.calls == [("defer", {"thinking": True, "ephemeral": False})]
    assert not flow.admission(client).busy and first.extras == {}
