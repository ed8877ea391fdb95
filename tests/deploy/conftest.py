"""Shared fixtures for the deploy/ checks: paths, and the npm tools of deploy/tools."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

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


@pytest.fixture(scope="session")
def node_tools() -> Path:
    """deploy/tools with its npm packages installed (`npm ci` from the committed lock file).

    Node and npm are Debian packages `nodejs` and `npm` (.ci/run installs them)."""
    for tool, package in (("node", "nodejs"), ("npm", "npm")):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} not found: .ci/run installs it (apt-get install {package})")
    installed = TOOLS / "node_modules" / ".package-lock.json"
    lock = TOOLS / "package-lock.json"
    if not installed.is_file() or installed.stat().st_mtime < lock.stat().st_mtime:
        result = subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=TOOLS,
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
        )
        if result.returncode != 0:
            pytest.fail(
                f"npm ci in {TOOLS} failed (needs the npm registry once):\n"
                + result.stdout
                + result.stderr
            )
    return TOOLS
