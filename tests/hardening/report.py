"""Write docs/reliability.md from the records of a soak run: `python -m tests.hardening.report records.jsonl`."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from tests.support.reliability import load, machine, merge

BEGIN, END = "<!-- soak:begin -->", "<!-- soak:end -->"


def table(records) -> str:
    lines = ["| test | runs | failures | lost | duplicated | pytest id |", "|---|---|---|---|---|---|"]
    for r in records:
        lines.append(f"| {r.name} | {r.runs} | {r.failures} | {r.lost} | {r.duplicated} | `{r.test.split('::')[-1]}` |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.hardening.report")
    p.add_argument("records", type=Path)
    p.add_argument("--doc", type=Path, default=Path("docs/reliability.md"))
    p.add_argument("--command", default="make soak")
    args = p.parse_args(argv)
    rows = merge(load(args.records))
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
