"""Optional compiled build of the hot modules (mypyc), with the pure Python as reference.

The modules in :data:`COMPILED_MODULES` are plain, fully typed Python; ``mypyc`` compiles
the same source files to C extensions, which run the observer about 1.8 times as fast
(``benchmarks/session_loop.py``).  Nothing about their behaviour differs: the pure
modules are what the test suite checks first, and the compiled build runs the protocol,
SQL and statistics unit tests plus end-to-end client tests again (``./dev test``).

Where the build lives
    ``build/speedups/<cache tag>/`` beside the package (``./dev`` builds it when a C
    compiler is present: ``python -m dbproxy.speedups_build``), with a ``STAMP`` file
    naming the SHA-256 of every compiled source, the Python and the mypy version.
    Importing ``dbproxy`` installs a finder for the compiled modules **only when the
    stamp matches the sources on disk**, so an edited module is never shadowed by a
    stale build: it silently falls back to the pure module, and :func:`status` says why.

Switches (read here, at import time, because they decide what gets imported before
any configuration exists): ``DBPROXY_PURE_PYTHON=1`` ignores the build;
``DBPROXY_REQUIRE_COMPILED=1`` makes importing ``dbproxy`` fail if the build cannot be
used (the compiled test run sets it, so it cannot pass on pure modules by accident).
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

#: The hot path and what it calls per statement: framing, session machine, events,
#: splitter, fingerprint cache and normalizer, sink and aggregator, the regression
#: detector's per-statement path; the OTLP span encoder; the forwarding protocols.
COMPILED_MODULES: tuple[str, ...] = (
    "dbproxy.protocol.codes",
    "dbproxy.protocol.events",
    "dbproxy.protocol.emit",
    "dbproxy.protocol.framing",
    "dbproxy.protocol.messages",
    "dbproxy.protocol.session",
    "dbproxy.sql.keywords",
    "dbproxy.sql.lexer",
    "dbproxy.sql.splitter",
    "dbproxy.sql.skeleton",
    "dbproxy.sql.normalize",
    "dbproxy.sql.commenter",
    "dbproxy.sql.fingerprint",
    "dbproxy.sql.cache",
    "dbproxy.observe.stats",
    "dbproxy.observe.histogram",
    "dbproxy.observe.topn",
    "dbproxy.observe.sink",
    "dbproxy.observe.aggregator",
    "dbproxy.observe.history",
    "dbproxy.observe.nplusone",
    "dbproxy.observe.detector",
    "dbproxy.observe.regression",
    "dbproxy.observe.span_filter",
    "dbproxy.export.otlp",
    "dbproxy.proxy.forward",
)
#: mypyc puts the code of all modules in one shared library with this name prefix.
_GROUP = "dbproxy_speedups"

PACKAGE_DIR = Path(__file__).resolve().parent
SOURCE_ROOT = PACKAGE_DIR.parent


def build_dir(root: Path = SOURCE_ROOT) -> Path:
    return root / "build" / "speedups" / (sys.implementation.cache_tag or "python")


def _source(module: str, root: Path = SOURCE_ROOT) -> Path:
    return root.joinpath(*module.split(".")).with_suffix(".py")


def _mypy_version() -> str:
    try:
        from importlib.metadata import version

        return version("mypy")
    except Exception:
        return "unknown"


def expected_stamp(root: Path = SOURCE_ROOT, mypy_version: str | None = None) -> str:
    """What ``STAMP`` must say for a build of the current sources to be used."""
    lines = [
        f"python {sys.version.split()[0]} {sys.implementation.cache_tag}",
        f"mypy {mypy_version if mypy_version is not None else _mypy_version()}",
    ]
    for module in COMPILED_MODULES:
        digest = hashlib.sha256(_source(module, root).read_bytes()).hexdigest()
        lines.append(f"{module} {digest}")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True, slots=True)
class Status:
    compiled: bool
    reason: str  # why not, or where the build is

    def describe(self) -> str:
        if self.compiled:
            return f"compiled with mypyc ({len(COMPILED_MODULES)} modules)"
        return f"pure Python ({self.reason})"


_status = Status(False, "not loaded yet")


def status() -> Status:
    """Whether the compiled modules are in use, and why not."""
    return _status


class _Finder(importlib.abc.MetaPathFinder):
    """Maps exactly the compiled module names (and mypyc's shared library) to files."""

    def __init__(self, files: dict[str, Path]) -> None:
        self.files = files

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        file = self.files.get(fullname)
        if file is None:
            return None
        loader = importlib.machinery.ExtensionFileLoader(fullname, str(file))
        return importlib.util.spec_from_file_location(fullname, file, loader=loader)


def _extension(directory: Path, stem: str) -> Path | None:
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        candidate = directory / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def _locate(directory: Path) -> tuple[dict[str, Path] | None, str]:
    stamp = directory / "STAMP"
    if not stamp.is_file():
        return None, "no compiled build: ./dev builds one when a C compiler is present"
    # The stamp's mypy line is checked against the build's own record, not the mypy
    # installed now (a runtime install needs no mypy); sources and Python must match.
    recorded = stamp.read_text()
    mypy_line = next((x for x in recorded.splitlines() if x.startswith("mypy ")), "mypy ?")
    if recorded != expected_stamp(mypy_version=mypy_line[5:]):
        return None, "the compiled build is stale: sources changed since it was built"
    files: dict[str, Path] = {}
    for module in COMPILED_MODULES:
        parts = module.split(".")
        found = _extension(directory.joinpath(*parts[:-1]), parts[-1])
        if found is None:
            return None, f"the compiled build lacks {module}"
        files[module] = found
    shared = [p for p in directory.iterdir() if p.name.startswith(f"{_GROUP}__mypyc")]
    if len(shared) != 1:
        return None, "the compiled build lacks mypyc's shared library"
    files[f"{_GROUP}__mypyc"] = shared[0]
    return files, str(directory)


def install(environ: Mapping[str, str] = os.environ) -> Status:
    """Called once by ``dbproxy/__init__.py``; see the module docstring."""
    global _status  # noqa: PLW0603 - what the import system did is process-wide by nature
    if any(m in sys.modules for m in COMPILED_MODULES):
        _status = Status(False, "modules were imported before the finder was installed")
    elif environ.get("DBPROXY_PURE_PYTHON", "") not in ("", "0"):
        _status = Status(False, "DBPROXY_PURE_PYTHON is set")
    else:
        files, reason = _locate(build_dir())
        if files is not None:
            sys.meta_path.insert(0, _Finder(files))
        _status = Status(files is not None, reason)
    if environ.get("DBPROXY_REQUIRE_COMPILED", "") not in ("", "0") and not _status.compiled:
        raise ImportError(f"DBPROXY_REQUIRE_COMPILED is set but dbproxy runs {_status.describe()}")
    return _status
