"""The figures behind docs/reliability.md.

Every hardening test reports what it did through the `reliability` fixture:

    def test_worker_kill(reliability):
        ...
        reliability.record("worker kill -9 mid-job", runs=20, failures=0, lost=0, duplicated=0)

`failures` counts runs where the system did the wrong thing (a crash, a wrong message, a charge for a refused
request); `lost` counts accepted jobs that were neither delivered nor refunded; `duplicated` counts jobs delivered
(posted) more than once. The test must assert its own expectations as well; the record is the figure, not the check.

`SOAK=1` asks tests for their long form (more runs); `soak_runs(fast, soak)` picks the count. With
`RELIABILITY_OUT=path.jsonl` every record is appended to that file; `python -m tests.hardening.report path.jsonl`
turns the file into the table in docs/reliability.md (what `make soak` does).
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path


def soak() -> bool:
    return os.environ.get("SOAK", "") not in ("", "0")


def soak_runs(fast: int, long: int) -> int:
    """How many runs a repeated test makes: `fast` in `make test`, `long` in `make soak`."""
    return long if soak() else fast


@dataclass
class Record:
    name: str
    runs: int
    failures: int
    lost: int
    duplicated: int
    test: str
    seconds: float
    note: str = ""


class Recorder:
    def __init__(self, test_id: str, out: Path | None):
        self.test_id = test_id
        self.out = out
        self.records: list[Record] = []
        self._t0 = time.monotonic()

    def record(self, name: str, *, runs: int, failures: int = 0, lost: int = 0, duplicated: int = 0,
               note: str = "") -> Record:
        if runs <= 0:
            raise ValueError(f"runs is {runs}, but a reliability record needs at least one run")
        for field, value in (("failures", failures), ("lost", lost), ("duplicated", duplicated)):
            if not 0 <= value <= runs * 1000:
                raise ValueError(f"{field} is {value}, which is not a count for {runs} runs")
        rec = Record(name, runs, failures, lost, duplicated, self.test_id, round(time.monotonic() - self._t0, 2), note)
        self.records.append(rec)
        if self.out is not None:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            with open(self.out, "a", encoding="utf-8") as f:
                f.write(json.dumps(asdict(rec)) + "\n")
        return rec


def load(path: Path) -> list[Record]:
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            rows.append(Record(**json.loads(line)))
    return rows


def merge(records: list[Record]) -> list[Record]:
    """One row per name, runs and counts summed, in first-seen order."""
    out: dict[str, Record] = {}
    for r in records:
        if r.name in out:
            m = out[r.name]
            out[r.name] = Record(m.name, m.runs + r.runs, m.failures + r.failures, m.lost + r.lost,
                                 m.duplicated + r.duplicated, m.test, round(m.seconds + r.seconds, 2), m.note or r.note)
        else:
            out[r.name] = r
    return list(out.values())


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"
