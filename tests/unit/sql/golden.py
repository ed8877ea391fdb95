"""Loader for ``tests/golden/fingerprint_cases.txt`` (format described in that file)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

GOLDEN_DIR = Path(__file__).resolve().parents[2] / "golden"
CASES_FILE = GOLDEN_DIR / "fingerprint_cases.txt"
IDS_FILE = GOLDEN_DIR / "fingerprint_ids.json"


@dataclass
class Group:
    line: int
    anchor: str
    same: list[str] = field(default_factory=list)
    different: list[str] = field(default_factory=list)
    expect: dict[str, str] = field(default_factory=dict)

    @property
    def statements(self) -> list[str]:
        return [self.anchor, *self.same, *self.different]


def _sql(raw: str) -> str:
    return raw.replace("{NL}", "\n").replace("{TAB}", "\t")


def load_groups(path: Path = CASES_FILE) -> list[Group]:
    groups: list[Group] = []
    current: Group | None = None
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            current = None
            continue
        if line.startswith("#"):
            continue
        marker, rest = line[:1], line[2:] if len(line) > 1 else ""
        if marker == ">":
            current = Group(line=number, anchor=_sql(rest))
            groups.append(current)
            continue
        if current is None:
            raise ValueError(f"{path}:{number}: line outside a group")
        if marker == "=":
            current.same.append(_sql(rest))
        elif marker == "!":
            current.different.append(_sql(rest))
        elif marker == "@":
            key, _, value = line[1:].partition(" ")
            current.expect[key] = value
        else:
            raise ValueError(f"{path}:{number}: unknown marker {marker!r}")
    return groups


def all_statements(groups: list[Group]) -> list[str]:
    return list(dict.fromkeys(s for g in groups for s in g.statements))
