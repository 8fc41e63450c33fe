"""Small pieces every BENCHMARKS.md section uses: loading a result, number formats, tables."""

from __future__ import annotations

import json
from pathlib import Path


def _load(results: Path, name: str):
    """``<name>.json``, else the smoke run's ``<name>_quick.json`` (so a --quick report shows its tables)."""
    for stem in (name, f"{name}_quick"):
        p = results / f"{stem}.json"
        if p.is_file():
            return json.loads(p.read_text())
    return None


def _n(v, digits: int | None = 0) -> str:
    """A number with thousands separators and ``digits`` decimals (None: as it is); "-" for none."""
    if v is None:
        return "-"
    return f"{v:,}" if digits is None else f"{v:,.{digits}f}"


def _ok(a: dict | None) -> str:
    if not a:
        return "not measured"
    return "**met**" if a["passed"] else "**not met**"


def _load_note(m: dict) -> str:
    before = m.get("load_average_1_5_15")
    after = m.get("load_average_after")
    s = f"load average (1/5/15 min) {before}" if before else ""
    if after:
        s += f" before, {after} after"
    return s


def _machine_note(m: dict) -> str:
    return f"{m.get('cpu_model')}, {m.get('cores')} cores, torch {m.get('torch')}, GPU: {m.get('gpu')}"


def table(head: list[str], align: str, rows) -> list[str]:
    """A Markdown table: ``align`` has one letter per column, ``l`` (text) or ``r`` (numbers, right-aligned)."""
    assert len(align) == len(head)
    sep = "|" + "".join("---|" if a == "l" else "---:|" for a in align)
    return ["| " + " | ".join(head) + " |", sep, *("| " + " | ".join(str(c) for c in row) + " |" for row in rows)]


def notes(results: Path, stem: str) -> list[str]:
    """Hand-written reading of a result (``<stem>.notes.md`` beside its JSON), shown after its table:
    what a table cannot say (load, what the contenders were, why a figure moved)."""
    md = Path(results) / f"{stem}.notes.md"
    return [md.read_text().strip(), ""] if md.is_file() else []
