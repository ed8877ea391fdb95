"""Paths of deploy/ and loaders shared by the deploy checks and the Prometheus integration test."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
TOOLS = DEPLOY / "tools"
DASHBOARDS = DEPLOY / "grafana" / "dashboards"
PROVISIONING = DEPLOY / "grafana" / "provisioning"
RULES = DEPLOY / "prometheus" / "rules" / "dbproxy.rules.yml"


def load_dashboards() -> dict[str, dict[str, Any]]:
    """Every provisioned dashboard, by file name."""
    boards = {p.name: json.loads(p.read_text()) for p in sorted(DASHBOARDS.glob("*.json"))}
    assert boards, f"no dashboards in {DASHBOARDS}"
    return boards


def all_panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    """Panels of a dashboard, rows' children included, rows themselves left out."""
    out: list[dict[str, Any]] = []
    for panel in board.get("panels", []):
        if panel["type"] == "row":
            out.extend(panel.get("panels", []))
        else:
            out.append(panel)
    return out
