"""What every benchmark writes next to its figures: the machine it ran on, and its own section of the doc."""

from __future__ import annotations

import platform
import re
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def command_line(script: str, argv: Sequence[str] | None = None) -> str:
    """How the benchmark was run, for the doc: `python <script> <its arguments>` (argv None: this process's)."""
    args = list(sys.argv[1:] if argv is None else argv)
    return " ".join(["python", script, *(shlex.quote(a) for a in args)])


def write_section(body: str, doc: Path = DOC) -> None:
    """Put `body` (starting with its `## Title` line) in `doc`, replacing the section of that title if present."""
    title = body.splitlines()[0]
    if not title.startswith("## "):
        raise ValueError(f"`body` has to start with a '## ' title line, but starts with {title!r}")
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    pattern = re.compile(re.escape(title) + r"\n.*?(?=\n## |\Z)", re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: body.rstrip() + "\n", text)
    else:
        text = text.rstrip() + "\n\n" + body.rstrip() + "\n"
    doc.write_text(text)
    print(f"\nwrote the section {title[3:]!r} of {doc}")
