"""Fingerprint micro-benchmark: µs per statement on the generated corpus.

    .venv/bin/python -m benchmarks.fingerprint            # markdown table
    .venv/bin/python -m benchmarks.fingerprint --json     # machine-readable

* cold: first sight of a new shape (lex + normalize + sqlglot parse + analysis), fresh caches
* shape: same shape, text not seen before (lex + normalize + shape-cache hit)
* exact: the exact text seen before (exact-cache hit; statements with a traceparent or
  longer than 8 KB are never exact-cached and are left out of this column)
* amortized: a workload with realistic repetition (Zipf over templates, mostly ``$n``
  bound statements, 10% new literals or a fresh traceparent) through one Fingerprinter

Targets with compiled sqlglot (sqlglotc): exact ≤ 2 µs, amortized ≤ 30 µs, cold median
≤ 150 µs and p99 ≤ 2 ms.  Whether sqlglot is compiled is detected and printed; to measure
pure-Python sqlglot, run this module from a venv that has ``sqlglot`` without ``[c]``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence

import sqlglot
import sqlglot.parser

from benchmarks.corpus import CLASSES, build_corpus, workload
from dbproxy.sql.cache import Fingerprinter


def sqlglot_compiled() -> bool:
    return str(sqlglot.parser.__file__).endswith((".so", ".pyd"))


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    idx = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[idx]


def _time_us(fn: Callable[[], object], repeat: int) -> float:
    start = time.perf_counter_ns()
    for _ in range(repeat):
        fn()
    return (time.perf_counter_ns() - start) / repeat / 1000


def _cold(sql: str, runs: int) -> float:
    samples = []
    for _ in range(runs):
        fp = Fingerprinter()
        start = time.perf_counter_ns()
        fp.fingerprint(sql)
        samples.append((time.perf_counter_ns() - start) / 1000)
    return statistics.median(samples)


def _shape(sql: str, repeat: int) -> float:
    fp = Fingerprinter(exact_capacity=0)
    fp.fingerprint(sql)
    return _time_us(lambda: fp.fingerprint(sql), repeat)


def _exact(sql: str, repeat: int) -> float | None:
    fp = Fingerprinter()
    fp.fingerprint(sql)
    if fp.stats.exact_size == 0:
        return None  # by design never exact-cached: a traceparent, or longer than 8 KB
    return _time_us(lambda: fp.fingerprint(sql), repeat)


def run(per_template: int, workload_size: int) -> dict[str, object]:
    corpus = build_corpus(per_template=per_template)
    for stmt in corpus[:: max(1, len(corpus) // 50)]:  # warm up imports and sqlglot tries
        Fingerprinter().fingerprint(stmt.sql)

    results: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for stmt in corpus:
        for bucket in (stmt.cls, "all"):
            row = results[bucket]
            row["cold"].append(_cold(stmt.sql, 3))
            row["shape"].append(_shape(stmt.sql, 20))
            exact = _exact(stmt.sql, 200)
            if exact is not None:
                row["exact"].append(exact)

    stream = workload(workload_size)
    fingerprinter = Fingerprinter()
    start = time.perf_counter_ns()
    for sql in stream:
        fingerprinter.fingerprint(sql)
    amortized = (time.perf_counter_ns() - start) / len(stream) / 1000
    stats = fingerprinter.stats

    table: dict[str, dict[str, float | int]] = {}
    for bucket in (*CLASSES, "all"):
        row = results[bucket]
        table[bucket] = {"n": len(row["cold"])}
        for phase in ("cold", "shape", "exact"):
            table[bucket][f"{phase}_median_us"] = round(statistics.median(row[phase]), 2)
            table[bucket][f"{phase}_p99_us"] = round(_percentile(row[phase], 0.99), 2)
    return {
        "python": sys.version.split()[0],
        "sqlglot": importlib.metadata.version("sqlglot"),
        "sqlglot_compiled": sqlglot_compiled(),
        "statements": len(corpus),
        "classes": table,
        "amortized_us": round(amortized, 2),
        "workload": {
            "executions": len(stream),
            "exact_hits": stats.exact_hits,
            "shape_hits": stats.shape_hits,
            "parses": stats.parses,
        },
    }


def markdown(report: dict[str, object]) -> str:
    compiled = "compiled (sqlglotc)" if report["sqlglot_compiled"] else "pure Python"
    lines = [
        f"sqlglot {report['sqlglot']} {compiled}, Python {report['python']}, "
        f"{report['statements']} statements",
        "",
        "| class | n | cold median | cold p99 | shape median | shape p99 "
        "| exact median | exact p99 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    classes = report["classes"]
    assert isinstance(classes, dict)
    for name, row in classes.items():
        lines.append(
            f"| {name} | {row['n']} | {row['cold_median_us']} | {row['cold_p99_us']} "
            f"| {row['shape_median_us']} | {row['shape_p99_us']} "
            f"| {row['exact_median_us']} | {row['exact_p99_us']} |"
        )
    wl = report["workload"]
    assert isinstance(wl, dict)
    lines += [
        "",
        f"amortized over {wl['executions']} executions with realistic repetition: "
        f"**{report['amortized_us']} µs** per statement "
        f"({wl['exact_hits']} exact hits, {wl['shape_hits']} shape hits, "
        f"{wl['parses']} parses). All figures in µs.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--json", action="store_true", help="print JSON instead of markdown")
    parser.add_argument("--per-template", type=int, default=20)
    parser.add_argument("--workload", type=int, default=50_000)
    args = parser.parse_args(argv)
    report = run(args.per_template, args.workload)
    print(json.dumps(report, indent=2) if args.json else markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
