"""Shared fixtures for the deploy/ checks: paths, and the npm tools of deploy/tools."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.deploy.files import TOOLS


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
