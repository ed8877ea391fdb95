"""End-to-end throughput: pgbench through dbproxy against direct PostgreSQL, PgBouncer
and the bare uvloop byte relay, interleaved in one run (``../shared/bench/compare.sh``).

    ./dev bench                      # select-only, -M extended, -c 1 and -c 16, 2 rounds
    ./dev bench --clients "1 16" --modes "simple extended" --rounds 3 --duration 10

Prints summary.md: TPS, ratio to direct and to PgBouncer, and proxy CPU µs per
transaction.  The machine is shared and noisy: compare ratios within one run only.
Needs PostgreSQL 15 server binaries (/usr/lib/postgresql/15/bin) and pgbouncer from
Debian; installs them with apt-get when missing and running as root.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _bench_dir() -> Path:
    override = os.environ.get("DBPROXY_BENCH_DIR")
    candidates = [Path(override)] if override else []
    candidates += [ROOT.parent / "shared" / "bench", ROOT / "shared" / "bench"]
    for path in candidates:
        if (path / "compare.sh").exists():
            return path
    sys.exit("benchmarks: compare.sh not found; set DBPROXY_BENCH_DIR to shared/bench")


def _ensure_debian_packages() -> None:
    missing = []
    if not Path("/usr/lib/postgresql/15/bin/postgres").exists():
        missing.append("postgresql-15")
    if shutil.which("pgbouncer") is None and not Path("/usr/sbin/pgbouncer").exists():
        missing.append("pgbouncer")
    if not missing:
        return
    if os.geteuid() != 0:
        sys.exit(f"benchmarks: please install {' '.join(missing)} (apt-get install)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--targets", default="direct pgb_session relay")
    parser.add_argument("--scripts", default="select")
    parser.add_argument("--modes", default="extended")
    parser.add_argument("--clients", default="1 16")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--out", default=None, help="output directory (default: a temp dir)")
    parser.add_argument("--dbproxy-args", default="", help="extra arguments for dbproxy run")
    args = parser.parse_args(argv)

    _ensure_debian_packages()
    bench = _bench_dir()
    dbproxy_bin = shutil.which("dbproxy") or str(Path(sys.executable).with_name("dbproxy"))
    out = Path(args.out or tempfile.mkdtemp(prefix="dbproxy-bench-"))
    env = {
        **os.environ,
        "DBPROXY_BIN": dbproxy_bin,
        "DBPROXY_ARGS": args.dbproxy_args,
        "TARGETS": args.targets,
        "SCRIPTS": args.scripts,
        "MODES": args.modes,
        "CLIENTS": args.clients,
        "ROUNDS": str(args.rounds),
        "DURATION": str(args.duration),
        "LARGE": "0",
        "PY": sys.executable,  # relay.py runs on the project's uvloop
    }
    knobs = " ".join(
        f"{k}={env[k]!r}" for k in ("TARGETS", "SCRIPTS", "MODES", "CLIENTS", "ROUNDS", "DURATION")
    )
    print(f"# command: {knobs} DBPROXY_BIN={dbproxy_bin} {bench / 'compare.sh'} {out}")
    cpu = platform.processor() or platform.machine()
    print(f"# machine: {cpu} nproc={os.cpu_count()} python {platform.python_version()}")
    subprocess.run([str(bench / "compare.sh"), str(out)], check=True, env=env)
    print((out / "summary.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
