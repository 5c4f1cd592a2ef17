"""The worker registry on its own, with a hand-moved clock: liveness, models, and when an unserved job must fail."""

from __future__ import annotations

from types import SimpleNamespace

from bot.dispatch.registry import WorkerRegistry
from generation.protocol.cards import ModelCard
from generation.protocol.queue import WorkerInfo


class Clock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def worker(name: str = "w1", model: str = "tiny", state: str = "ready", **kw) -> WorkerInfo:
    return WorkerInfo(name, model, model, state, **kw)


def job(job_id: int, model: str = "tiny", status: str = "queued") -> SimpleNamespace:
    return SimpleNamespace(id=job_id, model=model, status=status)


def registry(clock: Clock, **kw) -> WorkerRegistry:
    kw.setdefault("unserved_timeout", 60.0)
    kw.setdefault("load_error_grace", 10.0)
    return WorkerRegistry(clock=clock, **kw)


def test_a_worker_is_live_until_it_goes_silent_stops_or_fails():
    clock = Clock()
    reg = registry(clock)
    assert reg.heard(worker("a"))
    clock.advance(9.9)
    assert [w.name for w in reg.workers()] == ["a"]
    clock.advance(0.2)  # 10.1 s since its announcement: gone
    assert reg.workers() == []
    assert not reg.heard(worker("a"))  # the same state again: nothing new
    assert [w.name for w in reg.workers()] == ["a"]
    assert reg.heard(worker("a", state="stopped"))
    assert reg.workers() == []
    assert reg.heard(worker("b", state="failed", error="no such file"))
    assert reg.workers() == []


def test_models_tokens_and_capacity_follow_the_live_workers():
    clock = Clock()
    reg = registry(clock)
    reg.heard(worker("a", "tiny", max_batch=4))
    reg.heard(worker("b", "big", state="loading", serves_default=False))
    reg.heard(worker("c", "odd", state="stopping"))
    assert reg.models() == {"tiny"}  # loaded workers only
    assert reg.serves("tiny") and reg.serves("") and reg.serves("big") and not reg.serves("odd")
    assert reg.tokens() == {"tiny", "big", "odd", "_default"}
    assert reg.capacity() == (4 + 1) + (1 + 1)  # a batch and the next job for each worker taking jobs
    clock.advance(11)
    assert reg.models() == set() and reg.capacity() == 0 and not reg.serves("")


def test_an_unserved_job_fails_after_the_timeout_counted_from_when_it_was_first_seen():
    clock = Clock()
    reg = registry(clock)
    assert reg.overdue([job(1)]) == []
    clock.advance(30)
    assert reg.overdue([job(1), job(2)]) == []  # job 2 is seen for the first time now
    clock.advance(30)
    due = reg.overdue([job(1), job(2)])
    assert [job_id for job_id, _ in due] == [1]
    assert "No worker is serving model `tiny`: none was seen for 60 s" in due[0][1]
    clock.advance(30)
    assert [job_id for job_id, _ in reg.overdue([job(2)])] == [2]
    # Forgotten once decided: the caller failed it.
    assert reg.overdue([]) == [] and reg._unserved_since == {}


def test_a_worker_serving_the_model_meanwhile_restarts_the_wait():
    clock = Clock()
    reg = registry(clock)
    assert reg.overdue([job(1)]) == []
    clock.advance(50)
    reg.heard(worker("a", "tiny"))
    assert reg.overdue([job(1)]) == []  # served
    clock.advance(11)  # the worker went silent without taking it
    assert reg.overdue([job(1)]) == []
    clock.advance(59)
    assert reg.overdue([job(1)]) == []
    clock.advance(1)  # 60 s since it was unserved again
    assert [j for j, _ in reg.overdue([job(1)])] == [1]


def test_the_wait_counts_from_the_start_at_the_earliest():
    clock = Clock()
    reg = registry(clock)
    assert reg.overdue([job(1)]) == []
    clock.advance(50)
    reg.mark_started()
    clock.advance(59)
    assert reg.overdue([job(1)]) == []
    clock.advance(1)
    assert [j for j, _ in reg.overdue([job(1)])] == [1]


def test_the_default_model_is_named_so_in_the_reason():
    clock = Clock()
    reg = registry(clock)
    reg.overdue([job(1, model="")])
    clock.advance(60)
    (_, reason), = reg.overdue([job(1, model="")])
    assert reason.startswith("No worker is serving the default model")


def test_only_waiting_and_running_jobs_can_be_overdue():
    clock = Clock()
    reg = registry(clock)
    rows = [job(1, status="running"), job(2, status="succeeded"), job(3, status="queued")]
    reg.overdue(rows)
    clock.advance(61)
    assert sorted(j for j, _ in reg.overdue(rows)) == [1, 3]


def test_a_model_that_failed_to_load_fails_its_jobs_after_the_grace_with_the_workers_reason():
    clock = Clock()
    reg = registry(clock)
    assert reg.overdue([job(1, "broken")]) == []
    clock.advance(5)
    reg.heard(worker("a", "broken", state="failed", error="worker a could not load broken: no such file"))
    clock.advance(9.9)
    assert reg.overdue([job(1, "broken")]) == []
    clock.advance(0.2)
    (job_id, reason), = reg.overdue([job(1, "broken")])
    assert job_id == 1 and reason == "No worker can run model `broken`: worker a could not load broken: no such file"


def test_a_failed_worker_without_a_reason_still_gives_one():
    clock = Clock()
    reg = registry(clock)
    reg.heard(worker("a", "broken", state="failed"))
    reg.overdue([job(1, "broken")])
    clock.advance(10)
    (_, reason), = reg.overdue([job(1, "broken")])
    assert "worker a could not load its model" in reason


def test_a_worker_that_serves_the_model_after_the_load_error_cancels_the_grace():
    """Another worker (or the same one, restarted with a fixed model) came: the old load error no longer counts."""
    clock = Clock()
    reg = registry(clock)
    reg.heard(worker("a", "m", state="failed", error="bad"))
    clock.advance(1)
    reg.heard(worker("b", "m", state="loading"))
    assert reg.overdue([job(1, "m")]) == []
    clock.advance(15)  # b went silent without taking the job; the load error is older than b
    assert reg.overdue([job(1, "m")]) == []
    clock.advance(60)
    (_, reason), = reg.overdue([job(1, "m")])
    assert reason.startswith("No worker is serving model `m`")


def test_the_grace_is_never_longer_than_the_timeout():
    clock = Clock()
    reg = registry(clock, unserved_timeout=3.0, load_error_grace=10.0)
    reg.heard(worker("a", "m", state="failed", error="bad"))
    reg.overdue([job(1, "m")])
    clock.advance(3)
    (_, reason), = reg.overdue([job(1, "m")])
    assert reason == "No worker can run model `m`: bad"


def test_checks_are_spaced_but_come_at_once_after_a_load_failure():
    clock = Clock()
    reg = registry(clock, unserved_timeout=60.0, load_error_grace=10.0)  # every 2.5 s
    assert reg.check_due()
    clock.advance(2)
    assert not reg.check_due()
    assert reg.check_due(force=True)
    clock.advance(2.4)
    assert not reg.check_due()
    clock.advance(0.1)
    assert reg.check_due()
    reg.heard(worker("a", state="failed", error="bad"))
    assert reg.check_due()  # the failure asked for a look now
    assert not reg.check_due()
    reg.unserved_timeout = 1.0  # changed on a running dispatcher (tests do): the spacing follows, at least 0.5 s
    clock.advance(0.5)
    assert reg.check_due()


# --- the models offered to members, from the workers' cards ----------------------------------------------------------
def card(name: str, **kw) -> ModelCard:
    return ModelCard(name=name, architecture="sd1", **kw)


def test_served_models_come_from_the_cards_of_live_workers():
    """Each model a live worker announced a card for, by name, with the workers serving it; nothing else."""
    clock = Clock()
    reg = registry(clock)
    reg.heard(worker("a", "sdxl", models=(card("sdxl", max_side=1024), card("tiny"))))
    reg.heard(worker("b", "tiny", models=(card("tiny"),)))
    reg.heard(worker("c", "big", state="loading"))  # still loading its first model: no card yet
    reg.heard(worker("d", "gone", state="stopping", models=(card("gone"),)))  # takes no new jobs
    served = reg.served()
    assert [(m.name, m.workers) for m in served] == [("sdxl", ("a",)), ("tiny", ("a", "b"))]
    assert reg.card("SDXL") == card("sdxl", max_side=1024) and reg.card("big") is None and reg.card("gone") is None


def test_a_worker_that_goes_quiet_takes_its_cards_with_it():
    clock = Clock()
    reg = registry(clock)
    reg.heard(worker("a", "sdxl", models=(card("sdxl"),)))
    clock.advance(5)
    reg.heard(worker("b", "tiny", models=(card("tiny"),)))
    clock.advance(6)  # a: 11 s of silence
    assert [m.name for m in reg.served()] == ["tiny"] and reg.card("sdxl") is None
    reg.heard(worker("b", "tiny", state="stopped", models=(card("tiny"),)))
    assert reg.served() == []


def test_busy_only_when_every_worker_of_the_model_is_busy_and_waiting_counts_per_model():
    clock = Clock()
    reg = registry(clock)
    reg.heard(worker("a", "tiny", state="busy", models=(card("tiny"),)))
    reg.heard(worker("b", "sdxl", state="busy", models=(card("sdxl"),)))
    reg.heard(worker("c", "tiny", models=(card("tiny"),)))
    reg.note_waiting({"sdxl": 3, "tiny": 0, "_default": 2})
    by_name = {m.name: m for m in reg.served()}
    assert by_name["sdxl"].busy and by_name["sdxl"].waiting == 3
    assert not by_name["tiny"].busy and by_name["tiny"].waiting == 0
    reg.heard(worker("c", "tiny", state="busy", models=(card("tiny"),)))
    assert {m.name: m.busy for m in reg.served()} == {"sdxl": True, "tiny": True}


def test_the_newest_announcement_decides_a_models_card():
    """Two workers announce different cards for one model (one restarted with a new imaginebot.json): the newer wins."""
    clock = Clock()
    reg = registry(clock)
    reg.heard(worker("a", "tiny", models=(card("tiny", max_side=512),)))
    clock.advance(1)
    reg.heard(worker("b", "tiny", models=(card("Tiny", max_side=1024, default_steps=8),)))
    (served,) = reg.served()
    assert served.card.default_steps == 8 and served.name == "Tiny" and served.workers == ("a", "b")


def test_new_cards_count_as_news_without_a_change_of_state():
    clock = Clock()
    reg = registry(clock)
    assert reg.heard(worker("a", "tiny"))
    assert reg.heard(worker("a", "tiny", models=(card("tiny"),)))  # same state, cards now
    assert not reg.heard(worker("a", "tiny", models=(card("tiny"),)))


def test_starting_while_a_worker_loads_its_first_model():
    clock = Clock()
    reg = registry(clock)
    assert not reg.starting()
    reg.heard(worker("a", "tiny", state="loading"))
    assert reg.starting()
    reg.heard(worker("a", "tiny", state="loading", models=(card("tiny"),)))  # its first card: served now
    assert not reg.starting() and [m.name for m in reg.served()] == ["tiny"]
    reg.heard(worker("b", "big", state="loading"))
    clock.advance(11)  # b went quiet
    assert not reg.starting()
