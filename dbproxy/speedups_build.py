"""Build the optional mypyc-compiled hot modules (see :mod:`dbproxy.speedups`).

    python -m dbproxy.speedups_build [build|ensure|status]

``ensure`` builds only when no build matches the current sources, and never fails: a
machine without a C compiler, mypy or setuptools runs the pure Python modules.
``check`` exits 0 when a build matching the sources exists; ``status`` says what an
import of dbproxy uses.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from dbproxy import speedups
from dbproxy.speedups import (
    _GROUP,
    COMPILED_MODULES,
    SOURCE_ROOT,
    _extension,
    _locate,
    _source,
    build_dir,
    expected_stamp,
)


def build(root: Path = SOURCE_ROOT, *, quiet: bool = True) -> Path:
    """Compile :data:`COMPILED_MODULES` with mypyc into :func:`build_dir`; returns it.

    Works on a copy of the package in a temporary directory (mypyc writes next to the
    sources), then moves only the extension modules and the stamp into place."""
    target = build_dir(root)
    with tempfile.TemporaryDirectory(prefix="dbproxy-mypyc-") as tmp:
        work = Path(tmp)
        shutil.copytree(
            root / "dbproxy",
            work / "dbproxy",
            ignore=shutil.ignore_patterns("__pycache__", "*.so", "ui"),
        )
        sources = [str(_source(m, work).relative_to(work)) for m in COMPILED_MODULES]
        script = (
            "import sys\n"
            "from setuptools import setup\n"
            "from mypyc.build import mypycify\n"
            f"setup(name='{_GROUP}', ext_modules=mypycify({sources!r}, "
            f"group_name='{_GROUP}', opt_level='3'))\n"
        )
        (work / "setup_speedups.py").write_text(script)
        env = {**os.environ, "DBPROXY_PURE_PYTHON": "1"}
        env.pop("DBPROXY_REQUIRE_COMPILED", None)
        result = subprocess.run(
            [sys.executable, "setup_speedups.py", "build_ext", "--inplace"],
            cwd=work,
            env=env,
            capture_output=quiet,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            tail = "\n".join((result.stderr or result.stdout or "").splitlines()[-20:])
            raise RuntimeError(f"mypyc build failed:\n{tail}")
        staging = target.with_name(target.name + ".new")
        shutil.rmtree(staging, ignore_errors=True)
        for module in COMPILED_MODULES:
            parts = module.split(".")
            found = _extension(work.joinpath(*parts[:-1]), parts[-1])
            if found is None:
                raise RuntimeError(f"mypyc produced no extension for {module}")
            dest = staging.joinpath(*parts[:-1])
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copy2(found, dest / found.name)
        for shared in work.glob(f"{_GROUP}__mypyc*"):
            shutil.copy2(shared, staging / shared.name)
        (staging / "STAMP").write_text(expected_stamp(root))
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    return target


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m dbproxy.speedups_build",
        description="Build or inspect the optional mypyc-compiled hot modules.",
    )
    parser.add_argument("command", choices=("build", "status", "ensure", "check"))
    args = parser.parse_args(argv)
    if args.command == "status":
        print(speedups.status().describe())
        return 0
    if args.command == "check":  # exit 0 when a build matching the sources exists
        files, reason = _locate(build_dir())
        if files is None:
            print(f"dbproxy: {reason}", file=sys.stderr)
        return 0 if files is not None else 1
    if args.command == "ensure" and _locate(build_dir())[0] is not None:
        return 0
    missing = [m for m in ("mypyc", "setuptools") if importlib.util.find_spec(m) is None]
    if missing:
        print(
            f"dbproxy: cannot build the compiled modules ({' and '.join(missing)} not"
            " installed: the `speedups` extra); running pure Python",
            file=sys.stderr,
        )
        return 0 if args.command == "ensure" else 1
    print("dbproxy: compiling the hot modules with mypyc (once, ~30 s)…", file=sys.stderr)
    try:
        where = build()
    except RuntimeError as exc:
        print(f"dbproxy: {exc}\ndbproxy: running pure Python", file=sys.stderr)
        return 0 if args.command == "ensure" else 1
    print(f"dbproxy: compiled modules in {where}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
