"""Write docs/reliability.md from the records of a soak run: `python -m tests.hardening.report records.jsonl`."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from tests.support.reliability import Record, load, machine, merge

BEGIN, END = "<!-- soak:begin -->", "<!-- soak:end -->"


def table(records) -> str:
    lines = ["| test | runs | failures | lost | duplicated | pytest id |", "|---|---|---|---|---|---|"]
    for r in records:
        lines.append(f"| {r.name} | {r.runs} | {r.failures} | {r.lost} | {r.duplicated} | `{r.test.split('::')[-1]}` |")
    return "\n".join(lines)


def rows_in(text: str) -> list[Record]:
    """The rows of the table between the markers of a doc written by `main` (empty when there is none)."""
    if BEGIN not in text or END not in text:
        return []
    block = text.split(BEGIN, 1)[1].split(END, 1)[0]
    rows = []
    for line in block.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 6 or not cells[1].isdigit():
            continue
        name, runs, failures, lost, duplicated, test = cells
        rows.append(Record(name, int(runs), int(failures), int(lost), int(duplicated), test.strip("`"), 0.0))
    return rows


def merge_with(new: list[Record], old: list[Record]) -> list[Record]:
    """The old rows in their order with those of the same name replaced by the new ones, then the new names."""
    fresh = {r.name: r for r in new}
    out = [fresh.pop(r.name, r) for r in old]
    return out + list(fresh.values())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.hardening.report")
    p.add_argument("records", type=Path)
    p.add_argument("--doc", type=Path, default=Path("docs/reliability.md"))
    p.add_argument("--command", default="make soak")
    p.add_argument("--keep-other-rows", action="store_true",
                   help="a partial run: keep the doc's rows of tests it did not run (replaced by name otherwise)")
    args = p.parse_args(argv)
    rows = merge(load(args.records))
    if args.keep_other_rows and rows and args.doc.exists():
        rows = merge_with(rows, rows_in(args.doc.read_text(encoding="utf-8")))
    if not rows:
        print(f"{args.records}: no records", file=sys.stderr)
        return 1
    total = sum(r.runs for r in rows)
    bad = [r for r in rows if r.failures or r.lost or r.duplicated]
    block = "\n".join([
        BEGIN,
        f"Run `{args.command}` on {time.strftime('%Y-%m-%d')}; machine: {machine()}.",
        f"{len(rows)} tests, {total} runs in all; rows with a non-zero failure, lost or duplicated count: {len(bad)}.",
        "",
        table(rows),
        END,
    ])
    text = args.doc.read_text(encoding="utf-8") if args.doc.exists() else "# Reliability\n\n" + BEGIN + "\n" + END + "\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        text = head + block + tail
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    args.doc.write_text(text, encoding="utf-8")
    print(f"wrote {args.doc}: {len(rows)} rows, {len(bad)} with problems")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
