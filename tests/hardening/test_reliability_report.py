"""The recorder behind the `reliability` fixture and the writer of docs/reliability.md (tmp files only)."""

from __future__ import annotations

import json

import pytest

from tests.hardening import report
from tests.support.reliability import Record, Recorder, load, merge, soak_runs


def test_recorder_appends_one_json_line_per_record(tmp_path):
    out = tmp_path / "deep" / "records.jsonl"
    rec = Recorder("tests/hardening/test_x.py::test_y", out)
    rec.record("worker kill", runs=3)
    rec.record("worker kill", runs=2, failures=1, lost=0, duplicated=1, note="second")
    lines = out.read_text().splitlines()
    assert len(lines) == 2 and len(rec.records) == 2
    first = json.loads(lines[0])
    assert first["name"] == "worker kill" and first["runs"] == 3 and first["test"].endswith("::test_y")
    assert [r.note for r in load(out)] == ["", "second"]


def test_recorder_without_a_file_keeps_records_in_memory(tmp_path):
    rec = Recorder("t", None)
    assert rec.record("x", runs=1).runs == 1 and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kw", [{"runs": 0}, {"runs": 2, "lost": -1}, {"runs": 1, "failures": 5000}])
def test_recorder_refuses_counts_that_are_not_counts(kw):
    with pytest.raises(ValueError):
        Recorder("t", None).record("x", **kw)


def test_merge_sums_rows_of_the_same_name_in_first_seen_order():
    rows = [
        Record("b", 2, 0, 0, 0, "t::b", 1.0),
        Record("a", 1, 1, 0, 0, "t::a", 2.0),
        Record("b", 3, 0, 1, 2, "t::b2", 0.5, "late"),
    ]
    merged = merge(rows)
    assert [r.name for r in merged] == ["b", "a"]
    b = merged[0]
    assert (b.runs, b.failures, b.lost, b.duplicated, b.seconds, b.test, b.note) == (5, 0, 1, 2, 1.5, "t::b", "late")


def test_soak_runs_picks_the_long_count_under_soak(monkeypatch):
    monkeypatch.delenv("SOAK", raising=False)
    assert soak_runs(3, 20) == 3
    monkeypatch.setenv("SOAK", "0")
    assert soak_runs(3, 20) == 3
    monkeypatch.setenv("SOAK", "1")
    assert soak_runs(3, 20) == 20


def test_report_writes_the_table_between_the_markers_and_keeps_the_prose(tmp_path, capsys):
    records = tmp_path / "records.jsonl"
    rec = Recorder("tests/hardening/test_faults_x.py::test_kill", records)
    rec.record("worker kill -9", runs=20)
    rec.record("worker kill -9", runs=5)
    rec.record("nats restart", runs=10)
    doc = tmp_path / "reliability.md"
    doc.write_text(f"# Reliability\n\nProse before.\n\n{report.BEGIN}\nold table\n{report.END}\n\nProse after.\n")
    assert report.main([str(records), "--doc", str(doc)]) == 0
    text = doc.read_text()
    assert "Prose before." in text and "Prose after." in text and "old table" not in text
    block = text.split(report.BEGIN, 1)[1].split(report.END, 1)[0]
    assert "| worker kill -9 | 25 | 0 | 0 | 0 | `test_kill` |" in block
    assert "| nats restart | 10 | 0 | 0 | 0 |" in block
    assert "2 tests, 35 runs in all; rows with a non-zero failure, lost or duplicated count: 0." in block
    # Writing again replaces the block, it does not add a second one.
    assert report.main([str(records), "--doc", str(doc)]) == 0
    assert doc.read_text().count(report.BEGIN) == 1
    assert "wrote" in capsys.readouterr().out


def test_report_fails_on_a_bad_row_and_on_no_records(tmp_path):
    records = tmp_path / "records.jsonl"
    Recorder("t::u", records).record("lossy", runs=4, lost=1)
    doc = tmp_path / "new.md"
    assert report.main([str(records), "--doc", str(doc)]) == 1
    assert "| lossy | 4 | 0 | 1 | 0 |" in doc.read_text() and doc.read_text().startswith("# Reliability")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert report.main([str(empty), "--doc", str(tmp_path / "other.md")]) == 1


def test_a_partial_run_replaces_its_own_rows_and_keeps_the_others(tmp_path):
    """`--keep-other-rows`: `make soak SOAK_ARGS=...` of one file updates that file's rows and keeps the rest."""
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    rec = Recorder("tests/hardening/test_a.py::test_kill", first)
    rec.record("worker kill -9", runs=20)
    rec.record("nats restart", runs=10, failures=1)
    doc = tmp_path / "reliability.md"
    assert report.main([str(first), "--doc", str(doc)]) == 1
    rec2 = Recorder("tests/hardening/test_b.py::test_forged", second)
    rec2.record("nats restart", runs=12)
    rec2.record("forged outcome refused", runs=3)
    assert report.main([str(second), "--doc", str(doc), "--keep-other-rows"]) == 0
    block = doc.read_text().split(report.BEGIN, 1)[1].split(report.END, 1)[0]
    lines = [line for line in block.splitlines() if line.startswith("| ") and not line.startswith("| test")]
    assert lines == ["| worker kill -9 | 20 | 0 | 0 | 0 | `test_kill` |",
                     "| nats restart | 12 | 0 | 0 | 0 | `test_forged` |",
                     "| forged outcome refused | 3 | 0 | 0 | 0 | `test_forged` |"]
    assert "3 tests, 35 runs in all" in block
