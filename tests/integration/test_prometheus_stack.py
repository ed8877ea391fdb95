"""A real Prometheus with the shipped rules, scraping two proxies: every dashboard and rule
expression runs and returns data.

Debian's /usr/bin/prometheus scrapes two in-process proxies (plus a dead target, as a
proxy that is down) every second, with deploy/prometheus/rules/dbproxy.rules.yml loaded
and exemplar storage on. Before it starts, a day of history is backfilled with
`promtool tsdb create-blocks-from openmetrics`: the same series (labels taken from a
scrape of the two proxies) a day and a bit back, every query fast (2 ms), so `offset 1d`
expressions have data. Then a psycopg workload runs through both proxies: reads, writes in
transactions (some rolled back), a duplicate-key insert that fails (23505), a query that
is now slow but was fast a day ago (a latency regression), and a slow query that did not
exist a day ago; every statement carries a sqlcommenter traceparent and `version='2.0'`.

Then every PromQL expression of every panel, variable and annotation of the provisioned
dashboards (variables substituted with real values, Grafana's `$__rate_interval` etc. with
what Grafana would send for a 15 s scrape interval) and of every rule runs through the
HTTP API: each must be valid and return data. Alerts that fire on this workload must
return the series they were built for; those that are legitimately empty here
(DBProxyEventsDropped: nothing was dropped; DBProxyRegressionFinding: no detector finding
is open, and the detector's `dbproxy_findings` is not exported by this proxy yet) must be
valid and the other series they read must return data. Finally `sum by (fingerprint)` of
calls over both instances must equal the calls the workload made through both proxies.
"""

from __future__ import annotations

import json
import math
import re
import secrets
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from dbproxy.pgcluster import PgServer, free_port
from dbproxy.sql.fingerprint import fingerprint
from tests.deploy.files import RULES, all_panels, load_dashboards
from tests.fixtures.fix_proxy import RunningProxy, start_proxy
from tests.fixtures.otlp_sink import OtlpSink

PROMETHEUS_BIN = "/usr/bin/prometheus"
DAY = 86_400.0
WORKLOAD_S = 25.0
#: What Grafana sends for the compose stack's 15 s scrape interval (datasource timeInterval):
#: $__rate_interval = max($__interval + 15 s, 4 x 15 s).
RATE_INTERVAL = "1m"
STEP_S = 5
#: calls per second of every query a day ago (the backfilled history)
HISTORY_CALLS_PER_S = 50.0
TABLE = "promstack_items"

READ = f"SELECT v FROM {TABLE} WHERE id = %s"
WRITE = f"UPDATE {TABLE} SET v = v + 1 WHERE id = %s"
DUPLICATE = f"INSERT INTO {TABLE} (id, v) VALUES (%s, %s)"
REGRESSED = "SELECT pg_sleep(%s) AS regressed"
NEW_SLOW = "SELECT pg_sleep(%s) AS new_slow"


def fp(sql: str) -> str:
    """The fingerprint of a statement as psycopg sends it (`%s` → `$1`, `$2`, …)."""
    n = 0

    def number(_: re.Match[str]) -> str:
        nonlocal n
        n += 1
        return f"${n}"

    return fingerprint(re.sub("%s", number, sql)).id


# --- the workload ------------------------------------------------------------------------


class Workload:
    """psycopg clients through the proxies; counts every statement by fingerprint."""

    def __init__(self, proxies: list[RunningProxy]) -> None:
        self.proxies = proxies
        self.calls: Counter[str] = Counter()
        self.trace_ids: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.failures: list[BaseException] = []

    def _comment(self) -> str:
        trace_id = secrets.token_hex(16)
        with self._lock:
            self.trace_ids.add(trace_id)
        return f" /*traceparent='00-{trace_id}-{secrets.token_hex(8)}-01',version='2.0'*/"

    def _execute(
        self, conn: psycopg.Connection[Any], counts: Counter[str], sql: str, *params: object
    ) -> None:
        counts[fp(sql)] += 1
        conn.execute(sql + self._comment(), params)

    def _connect(self, proxy: RunningProxy, application: str) -> psycopg.Connection[Any]:
        return psycopg.connect(proxy.dsn(), autocommit=True, application_name=application)

    def web_iteration(self, conn: psycopg.Connection[Any], counts: Counter[str], i: int) -> None:
        for k in range(5):
            self._execute(conn, counts, READ, 1 + (i * 7 + k) % 500)
        # BEGIN … COMMIT, every 4th ROLLBACK (psycopg sends these as statements too)
        counts[fp("BEGIN")] += 1
        rollback = i % 4 == 3
        counts[fp("ROLLBACK" if rollback else "COMMIT")] += 1
        with conn.transaction():
            self._execute(conn, counts, WRITE, 1 + i % 500)
            self._execute(conn, counts, READ, 1 + i % 500)
            if rollback:
                raise psycopg.Rollback()
        try:  # id 1 exists: 23505 unique_violation
            self._execute(conn, counts, DUPLICATE, 1, i)
        except psycopg.errors.UniqueViolation:
            pass
        else:
            raise AssertionError("the duplicate insert succeeded")

    def _loop(self, proxy: RunningProxy, application: str, body: Callable[..., None]) -> None:
        counts: Counter[str] = Counter()
        try:
            with self._connect(proxy, application) as conn:
                i = 0
                while not self._stop.is_set():
                    body(conn, counts, i)
                    i += 1
        except BaseException as exc:  # surfaced by stop()
            self.failures.append(exc)
        finally:
            with self._lock:
                self.calls.update(counts)

    def warm_up(self) -> None:
        """One of every statement through each proxy, so every series exists."""
        counts: Counter[str] = Counter()
        for proxy in self.proxies:
            with self._connect(proxy, "web") as conn:
                self.web_iteration(conn, counts, 3)  # the rollback variant
                self.web_iteration(conn, counts, 0)
                self._execute(conn, counts, REGRESSED, 0.001)
                self._execute(conn, counts, NEW_SLOW, 0.001)
        self.calls.update(counts)

    def start(self) -> None:
        def web(conn: psycopg.Connection[Any], counts: Counter[str], i: int) -> None:
            self.web_iteration(conn, counts, i)
            time.sleep(0.01)

        def regressed(conn: psycopg.Connection[Any], counts: Counter[str], i: int) -> None:
            self._execute(conn, counts, REGRESSED, 0.06)

        def new_slow(conn: psycopg.Connection[Any], counts: Counter[str], i: int) -> None:
            self._execute(conn, counts, NEW_SLOW, 0.05)

        for proxy in self.proxies:
            for app, body in (("web", web), ("worker", regressed), *[("reports", new_slow)] * 3):
                t = threading.Thread(target=self._loop, args=(proxy, app, body), daemon=True)
                t.start()
                self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)
        assert not self.failures, self.failures


# --- a day of history --------------------------------------------------------------------


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(labels: dict[str, str]) -> str:
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items()) + "}"


def day_ago_openmetrics(
    scrapes: dict[str, str], *, start: float, end: float, step: float, absent: set[str]
) -> str:
    """OpenMetrics for the scraped series, a day back: every query 50 calls/s at 2 ms.

    50 calls/s per query and instance is far above what the live workload can reach on
    any machine, so DBProxyThroughputDrop fires whatever this machine's speed.

    `scrapes` maps instance → its /metrics text. Fingerprints in `absent` did not run a
    day ago; no query failed then (no dbproxy_query_errors_total); the version tag was
    `1.0`. Counters grow linearly from 0, gauges keep their scraped value.
    """
    families: dict[str, tuple[str, list[tuple[str, str, dict[str, str], float]]]] = {}
    for instance, text in scrapes.items():
        for family in text_string_to_metric_families(text):
            if family.name == "dbproxy_query_errors":
                continue
            _, samples = families.setdefault(family.name, (family.type, []))
            for s in family.samples:
                labels = dict(s.labels)
                if labels.get("fingerprint") in absent:
                    continue
                if labels.get("tag") == "version":
                    labels["value"] = "1.0"
                samples.append((instance, s.name, labels, s.value))
    times = [start + i * step for i in range(int((end - start) / step) + 1)]
    out: list[str] = []
    for name, (kind, samples) in families.items():
        if not samples:
            continue
        out.append(f"# TYPE {name} {kind}")
        for t in times:
            calls = HISTORY_CALLS_PER_S * (t - start)
            for instance, sample, labels, value in samples:
                le = labels.get("le")
                if kind == "histogram":
                    if le is not None:
                        v = calls if float(le) >= 0.002 else 0.0
                    elif sample.endswith("_sum"):
                        v = calls * 0.002
                    else:
                        v = calls
                elif kind == "counter":
                    v = calls
                elif name == "dbproxy_stats_started_timestamp_seconds":
                    v = start
                else:
                    v = value
                all_labels = {"job": "dbproxy", "instance": instance, **labels}
                out.append(f"{sample}{_labels(all_labels)} {v} {t:.3f}")
    out.append("# EOF")
    return "\n".join(out) + "\n"


# --- Prometheus ----------------------------------------------------------------------------


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url

    def get(self, path: str, **params: str | list[str]) -> Any:
        query = urllib.parse.urlencode(params, doseq=True)
        try:
            with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=10) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            body = json.loads(exc.read())
        return body

    def query(self, expr: str, at: float) -> list[dict[str, Any]]:
        body = self.get("/api/v1/query", query=expr, time=f"{at:.3f}")
        assert body["status"] == "success", f"{expr}\n→ {body}"
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def query_range(self, expr: str, start: float, end: float) -> list[dict[str, Any]]:
        body = self.get(
            "/api/v1/query_range",
            query=expr,
            start=f"{start:.3f}",
            end=f"{end:.3f}",
            step=str(STEP_S),
        )
        assert body["status"] == "success", f"{expr}\n→ {body}"
        result: list[dict[str, Any]] = body["data"]["result"]
        return result


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@pytest.fixture
def two_proxies(pg_server: PgServer, pg_dsn: str) -> Iterator[list[RunningProxy]]:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
        conn.execute(f"CREATE TABLE {TABLE} (id int PRIMARY KEY, v int NOT NULL)")
        conn.execute(f"INSERT INTO {TABLE} SELECT g, 0 FROM generate_series(1, 500) g")
    otlp = OtlpSink()
    proxies: list[RunningProxy] = []
    try:
        for _ in range(2):
            proxies.append(
                start_proxy(
                    pg_server,
                    metrics_tags=("application", "version"),
                    trace=True,
                    otlp_endpoint=otlp.url,
                    otlp_protocol="http/protobuf",
                )
            )
        yield proxies
    finally:
        for proxy in proxies:
            proxy.stop()
        otlp.close()
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {TABLE}")


def _start_prometheus(tmp_path: Path, targets: list[str]) -> tuple[subprocess.Popen[bytes], str]:
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [{"job_name": "dbproxy", "static_configs": [{"targets": targets}]}],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = (tmp_path / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            PROMETHEUS_BIN,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--enable-feature=exemplar-storage",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while not _ready(f"{url}/-/ready"):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail("prometheus did not start:\n" + (tmp_path / "prometheus.log").read_text())
        time.sleep(0.1)
    return process, url


# --- expressions ---------------------------------------------------------------------------

LABEL_VALUES = re.compile(r"label_values\((.*),\s*(\w+)\)")
#: Alerts that can legitimately be empty under this workload: each is checked to be valid,
#: and when empty, every metric it reads must return data (except NOT_EXPORTED_HERE).
QUIET_ALERTS = {
    "DBProxyEventsDropped": "no events were dropped",
    "DBProxyRegressionFinding": "no finding of the built-in detector is open",
}
#: Metrics the proxy under test does not export yet.
NOT_EXPORTED_HERE = {
    "dbproxy_findings": "the built-in regression detector's gauge (built on another branch)",
}


def _regex_value(values: list[str]) -> str:
    """A multi-value variable as Grafana's Prometheus datasource renders it in `=~"…"`."""
    escaped = [re.sub(r"([\\^$*+?.()|{}\[\]])", r"\\\\\1", v) for v in values]
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


def _substitute(expr: str, variables: dict[str, str], range_s: int) -> str:
    builtins = {
        "__rate_interval": RATE_INTERVAL,
        "__interval": f"{STEP_S}s",
        "__range": f"{range_s}s",
    }
    for name, value in {**builtins, **variables}.items():
        expr = expr.replace("${" + name + "}", value).replace("$" + name, value)
    assert "$" not in expr.replace("$1", ""), f"unsubstituted variable in {expr}"
    return expr


def test_every_dashboard_and_rule_expression_returns_data_from_a_real_prometheus(
    two_proxies: list[RunningProxy], tmp_path: Path
) -> None:
    for binary, package in ((PROMETHEUS_BIN, "prometheus"), ("promtool", "prometheus")):
        if shutil.which(binary) is None:
            pytest.fail(f"{binary} not found: .ci/run installs it (apt-get install {package})")
    proxies = two_proxies
    instances = [f"{p.app.http.address.host}:{p.app.http.address.port}" for p in proxies]
    dead = f"127.0.0.1:{free_port()}"  # a proxy that is down: DBProxyUpstreamDown
    workload = Workload(proxies)
    workload.warm_up()

    # A day of history for the same series, before Prometheus starts.
    scrapes = {}
    for instance, proxy in zip(instances, proxies, strict=True):
        proxy.drain_now()
        with urllib.request.urlopen(f"{proxy.http_url}/metrics", timeout=10) as response:
            scrapes[instance] = response.read().decode()
    now = time.time()
    history = day_ago_openmetrics(
        scrapes,
        start=now - DAY - 80 * 60,
        end=now - DAY + 5 * 60,
        step=15,
        absent={fp(NEW_SLOW)},
    )
    (tmp_path / "history.om").write_text(history)
    backfill = subprocess.run(
        [
            "promtool",
            "tsdb",
            "create-blocks-from",
            "openmetrics",
            str(tmp_path / "history.om"),
            str(tmp_path / "data"),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert backfill.returncode == 0, backfill.stdout + backfill.stderr

    process, url = _start_prometheus(tmp_path, [*instances, dead])
    prom = Prometheus(url)
    try:
        live_start = time.time()
        # the first scrape of both proxies, then the workload
        deadline = time.monotonic() + 10
        while len(prom.query('up{job="dbproxy"} == 1', time.time())) < 2:
            assert time.monotonic() < deadline, "prometheus did not scrape both proxies"
            time.sleep(0.2)
        workload.start()
        time.sleep(WORKLOAD_S)
        workload.stop()
        expected = dict(workload.calls)
        for proxy in proxies:
            proxy.drain_now()
        # wait for a scrape that has every call, and a rule evaluation after it
        total = sum(expected.values())
        deadline = time.monotonic() + 15
        while True:
            result = prom.query(
                'sum(dbproxy_query_duration_seconds_count{job="dbproxy"})', time.time()
            )
            if result and float(result[0]["value"][1]) == total:
                break
            assert time.monotonic() < deadline, f"scraped calls {result} never reached {total}"
            time.sleep(0.3)
        time.sleep(2.5)
        at = time.time()
        range_s = math.ceil(at - live_start)

        # --- sum by fingerprint over both instances = calls made through both proxies ---
        summed = prom.query(
            'sum by (fingerprint) (dbproxy_query_duration_seconds_count{job="dbproxy"})', at
        )
        assert {r["metric"]["fingerprint"]: round(float(r["value"][1])) for r in summed} == expected
        per_instance = prom.query(
            'count by (fingerprint) (dbproxy_query_duration_seconds_count{job="dbproxy"})', at
        )
        assert {r["metric"]["fingerprint"]: r["value"][1] for r in per_instance} == {
            f: "2" for f in expected
        }, "every fingerprint should be seen by both proxies, under the same id"

        # --- every rule is healthy in Prometheus itself -----------------------------------
        groups = prom.get("/api/v1/rules")["data"]["groups"]
        evaluated = [r for g in groups for r in g["rules"]]
        assert evaluated and all(r["health"] == "ok" for r in evaluated), [
            (r["name"], r.get("lastError")) for r in evaluated if r["health"] != "ok"
        ]
        rules = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
        assert len(evaluated) == len(rules)

        # --- every rule expression: valid, and data --------------------------------------
        fired: dict[str, list[dict[str, str]]] = {}
        for rule in rules:
            result = prom.query(rule["expr"], at)
            name = rule.get("record") or rule["alert"]
            if "record" in rule:
                assert result, f"recording rule {name} returned nothing"
                assert prom.query(f"count({name})", at), f"{name} was never recorded"
                continue
            fired[name] = [r["metric"] for r in result]
            if name in QUIET_ALERTS:
                if result:
                    continue
                # legitimately empty here: the series it reads must still return data
                for selector in set(
                    re.findall(r"\b(?:dbproxy_|fingerprint:)[a-z_:]+", rule["expr"])
                ):
                    if selector in NOT_EXPORTED_HERE:
                        continue
                    assert prom.query(f"count({selector})", at), f"{name}: {selector} is empty"
            else:
                assert result, f"alert {name} returned nothing"
        assert {m["fingerprint"] for m in fired["DBProxyQueryLatencyRegression"]} == {fp(REGRESSED)}
        assert {m["fingerprint"] for m in fired["DBProxyNewSlowQuery"]} == {fp(NEW_SLOW)}
        assert {m["fingerprint"] for m in fired["DBProxyQueryErrorSpike"]} == {fp(DUPLICATE)}
        # (ThroughputDrop fires because a 15-minute rate over the ~30 s of live data is far
        # below a day ago's 50 calls/s per query: an artifact of this short test.)
        assert {m["job"] for m in fired["DBProxyThroughputDrop"]} == {"dbproxy"}
        assert [(m["instance"], m["reason"]) for m in fired["DBProxyUpstreamDown"]] == [
            (dead, "scrape_failed")
        ]
        regression = next(
            m for m in fired["DBProxyQueryLatencyRegression"] if m["fingerprint"] == fp(REGRESSED)
        )
        assert regression["query"] == "SELECT pg_sleep($1) AS regressed"
        # Prometheus evaluated them too: pending (their `for:` has not elapsed)
        alerts = prom.get("/api/v1/alerts")["data"]["alerts"]
        assert {a["labels"]["alertname"] for a in alerts} == {
            name for name, result in fired.items() if result
        }

        # --- every dashboard expression: valid, and data ------------------------------------
        variables = {
            "instance": _regex_value(instances),
            "database": _regex_value([proxies[0].pg.database]),
            "user": _regex_value([proxies[0].pg.app_user]),
            "fingerprint": fp(DUPLICATE),  # it has calls, errors, rows, history, exemplars
            "limit": "10",
        }
        checked = 0
        for name, board in load_dashboards().items():
            names = {v["name"] for v in board["templating"]["list"]}
            assert names <= set(variables), f"{name}: no test value for {names - set(variables)}"
            for variable in board["templating"]["list"]:
                if variable["type"] != "query":
                    continue
                match = LABEL_VALUES.fullmatch(variable["query"]["query"])
                assert match, variable
                selector = _substitute(match.group(1), variables, range_s)
                body = prom.get(
                    f"/api/v1/label/{match.group(2)}/values",
                    **{"match[]": selector, "start": f"{live_start:.0f}", "end": f"{at:.0f}"},
                )
                assert body["status"] == "success", body
                values = body["data"]
                assert values, f"{name}: variable {variable['name']} has no values"
                wanted = {
                    "instance": instances,
                    "fingerprint": [fp(DUPLICATE), fp(REGRESSED)],
                }.get(variable["name"], [])
                assert set(wanted) <= set(values), (variable["name"], values)
                checked += 1
            for annotation in board["annotations"]["list"]:
                if annotation["datasource"]["type"] != "prometheus":
                    continue
                expr = _substitute(annotation["target"]["expr"], variables, range_s)
                result = prom.query_range(expr, live_start, at)
                assert [r["metric"] for r in result] == [{"value": "2.0"}], result
                checked += 1
            for panel in all_panels(board):
                for target in panel.get("targets", []):
                    if target["datasource"]["type"] != "prometheus":
                        continue  # the Loki logs panel: no Loki here
                    expr = _substitute(target["expr"], variables, range_s)
                    if target["instant"]:
                        result = prom.query(expr, at)
                    else:
                        result = prom.query_range(expr, live_start, at)
                    assert result, f"{name}: panel {panel['title']!r} {target['refId']}: {expr}"
                    checked += 1
                    if target.get("exemplar"):
                        body = prom.get(
                            "/api/v1/query_exemplars",
                            query=expr,
                            start=f"{live_start:.3f}",
                            end=f"{at:.3f}",
                        )
                        assert body["status"] == "success", body
                        traces = {
                            e["labels"]["trace_id"]
                            for series in body["data"]
                            for e in series["exemplars"]
                        }
                        assert traces, f"{name}: {panel['title']!r}: no exemplars"
                        assert traces <= workload.trace_ids
        assert checked > 40
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
