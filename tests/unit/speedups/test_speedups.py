"""The optional mypyc build: used only when it matches the sources, and switchable."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dbproxy import speedups


def _python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DBPROXY_")}
    return subprocess.run(
        [sys.executable, "-c", code],
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


STATUS = (
    "import dbproxy.speedups as s, dbproxy.protocol.session as m;"
    "print(s.status().compiled, m.__file__)"
)


def test_stamp_names_every_compiled_source_and_changes_with_it(tmp_path: Path) -> None:
    shutil.copytree(speedups.SOURCE_ROOT / "dbproxy", tmp_path / "dbproxy")
    before = speedups.expected_stamp(tmp_path, mypy_version="1")
    for module in speedups.COMPILED_MODULES:
        assert module in before
    session = tmp_path / "dbproxy" / "protocol" / "session.py"
    session.write_text(session.read_text() + "\n# edited\n")
    after = speedups.expected_stamp(tmp_path, mypy_version="1")
    assert before != after
    changed = [line for line in after.splitlines() if line not in before.splitlines()]
    assert len(changed) == 1 and changed[0].startswith("dbproxy.protocol.session ")


def test_pure_python_switch_ignores_the_build() -> None:
    result = _python(STATUS, DBPROXY_PURE_PYTHON="1")
    assert result.returncode == 0, result.stderr
    compiled, path = result.stdout.split()
    assert compiled == "False" and path.endswith("session.py")


def test_require_compiled_fails_loudly_when_the_build_is_not_used() -> None:
    result = _python(STATUS, DBPROXY_PURE_PYTHON="1", DBPROXY_REQUIRE_COMPILED="1")
    assert result.returncode != 0
    assert "DBPROXY_REQUIRE_COMPILED is set but dbproxy runs pure Python" in result.stderr


def test_a_stale_build_is_never_loaded(tmp_path: Path) -> None:
    build = tmp_path / "build"
    build.mkdir()
    (build / "STAMP").write_text(speedups.expected_stamp(mypy_version="1") + "extra\n")
    files, reason = speedups._locate(build)
    assert files is None and "stale" in reason
    files, reason = speedups._locate(tmp_path / "missing")
    assert files is None and "no compiled build" in reason


def test_the_current_build_is_loaded_by_default() -> None:
    """``./dev test`` builds the modules first (``python -m dbproxy.speedups_build ensure``)."""
    files, reason = speedups._locate(speedups.build_dir())
    if files is None:
        pytest.fail(f"{reason} (run: python -m dbproxy.speedups_build ensure)", pytrace=False)
    result = _python(STATUS)
    assert result.returncode == 0, result.stderr
    compiled, path = result.stdout.split()
    assert compiled == "True"
    assert Path(path).suffix == ".so" and str(speedups.build_dir()) in path
