# ruff: noqa: E501  (PromQL expressions read better unsplit)
"""Generate the provisioned Grafana dashboards (deploy/grafana/dashboards/*.json).

    uv run python deploy/grafana/generate_dashboards.py          # rewrite the JSON files
    uv run python deploy/grafana/generate_dashboards.py --check  # exit 1 if they are stale

The JSON files are what Grafana provisions and what the tests check (types from
@grafana/schema, datasources, units, variables, and every PromQL expression run against a
real Prometheus scraping two proxies); this script only keeps the two dashboards
consistent (one selector, one set of units, one panel layout helper). Metric names are the
contract in README.md ("Metrics"); `fingerprint:dbproxy_query_info:one` comes from the
recording rules in deploy/prometheus/rules/dbproxy.rules.yml, which the dashboards need.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

OUT = Path(__file__).resolve().parent / "dashboards"
SCHEMA_VERSION = 41  # Grafana 12.1 (compose.yaml pins grafana/grafana:12.1.1)

PROM = {"type": "prometheus", "uid": "prometheus"}
LOKI = {"type": "loki", "uid": "loki"}
GRAFANA = {"type": "grafana", "uid": "-- Grafana --"}

# Every per-query selector honours the instance/database/user variables.
SEL = 'instance=~"$instance", database=~"$database", user=~"$user"'
FP_SEL = SEL + ', fingerprint="$fingerprint"'
INFO = "fingerprint:dbproxy_query_info:one"
JOIN = f"* on (fingerprint) group_left (summary, query) {INFO}"
OVERVIEW_UID = "dbproxy-overview"
TOP_UID = "dbproxy-top-queries"

Json = dict[str, Any]


class Layout:
    """Places panels left to right on Grafana's 24-column grid and numbers them."""

    def __init__(self) -> None:
        self.x = 0
        self.y = 0
        self.row_h = 0
        self.next_id = 1
        self.panels: list[Json] = []

    def add(self, panel: Json, w: int, h: int) -> None:
        if self.x + w > 24:
            self.x, self.y, self.row_h = 0, self.y + self.row_h, 0
        panel["id"] = self.next_id
        panel["gridPos"] = {"h": h, "w": w, "x": self.x, "y": self.y}
        self.next_id += 1
        self.x += w
        self.row_h = max(self.row_h, h)
        self.panels.append(panel)

    def row(self, title: str) -> None:
        if self.x:
            self.x, self.y, self.row_h = 0, self.y + self.row_h, 0
        self.panels.append(
            {
                "type": "row",
                "id": self.next_id,
                "title": title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y},
                "panels": [],
            }
        )
        self.next_id += 1
        self.y += 1


def target(
    expr: str,
    ref: str = "A",
    *,
    legend: str = "__auto",
    instant: bool = False,
    fmt: str = "time_series",
    exemplar: bool = False,
) -> Json:
    return {
        "datasource": PROM,
        "refId": ref,
        "expr": expr,
        "legendFormat": legend,
        "range": not instant,
        "instant": instant,
        "format": fmt,
        "exemplar": exemplar,
        "editorMode": "code",
    }


def thresholds(*steps: tuple[float | None, str]) -> Json:
    return {"mode": "absolute", "steps": [{"color": c, "value": v} for v, c in steps]}


def timeseries(
    title: str,
    targets: list[Json],
    unit: str,
    description: str,
    *,
    stack: bool = False,
    draw: str = "line",
    links: list[Json] | None = None,
) -> Json:
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": PROM,
        "targets": targets,
        "links": links or [],
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                "min": 0,
                "color": {"mode": "palette-classic"},
                "custom": {
                    "drawStyle": draw,
                    "lineWidth": 1,
                    "fillOpacity": 10 if stack else 0,
                    "showPoints": "never",
                    "spanNulls": False,
                    "stacking": {"mode": "normal" if stack else "none", "group": "A"},
                    "axisPlacement": "auto",
                },
            },
            "overrides": [],
        },
        "options": {
            "legend": {
                "showLegend": True,
                "displayMode": "table",
                "placement": "bottom",
                "calcs": ["mean", "max", "lastNotNull"],
            },
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
    }


def stat(title: str, expr: str, unit: str, description: str, steps: Json) -> Json:
    return {
        "type": "stat",
        "title": title,
        "description": description,
        "datasource": PROM,
        "targets": [target(expr)],
        "fieldConfig": {
            "defaults": {"unit": unit, "color": {"mode": "thresholds"}, "thresholds": steps},
            "overrides": [],
        },
        "options": {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "orientation": "auto",
            "textMode": "auto",
            "colorMode": "value",
            "graphMode": "area",
            "justifyMode": "auto",
            "wideLayout": True,
            "showPercentChange": False,
            "percentChangeColorMode": "standard",
        },
    }


def link(title: str, url: str) -> Json:
    """A panel link (the schema types panel links as DashboardLink: every key present)."""
    return {
        "title": title,
        "type": "link",
        "url": url,
        "icon": "external link",
        "tags": [],
        "asDropdown": False,
        "includeVars": False,
        "keepTime": False,
        "targetBlank": False,
        "tooltip": "",
    }


def drill_link() -> list[Json]:
    return [
        {
            "title": "Drill down into this query",
            "url": f"/d/{TOP_UID}/dbproxy-top-queries?var-fingerprint=${{__value.raw}}"
            "&${instance:queryparam}&${database:queryparam}&${user:queryparam}"
            "&${__url_time_range}",
        }
    ]


def column(name: str, unit: str, display: str, extra: list[Json] | None = None) -> Json:
    return {
        "matcher": {"id": "byName", "options": name},
        "properties": [
            {"id": "unit", "value": unit},
            {"id": "displayName", "value": display},
            *(extra or []),
        ],
    }


def table(
    title: str,
    targets: list[Json],
    description: str,
    columns: list[Json],
    sort_by: str,
    *,
    hidden: tuple[str, ...] = (),
) -> Json:
    """A table of instant queries merged on their labels (one row per fingerprint)."""
    exclude = {"Time": True, **{name: True for name in hidden}}
    return {
        "type": "table",
        "title": title,
        "description": description,
        "datasource": PROM,
        "targets": targets,
        "transformations": [
            {"id": "merge", "options": {}},
            {"id": "organize", "options": {"excludeByName": exclude}},
            {"id": "sortBy", "options": {"sort": [{"displayName": sort_by, "desc": True}]}},
        ],
        "fieldConfig": {
            "defaults": {
                "unit": "none",
                "custom": {
                    "align": "auto",
                    "cellOptions": {"type": "auto"},
                    "inspect": True,
                    "filterable": True,
                },
            },
            "overrides": [
                {
                    "matcher": {"id": "byName", "options": "fingerprint"},
                    "properties": [
                        {"id": "links", "value": drill_link()},
                        {"id": "custom.width", "value": 150},
                    ],
                },
                {
                    "matcher": {"id": "byName", "options": "query"},
                    "properties": [
                        {"id": "custom.cellOptions", "value": {"type": "auto", "wrapText": True}}
                    ],
                },
                *columns,
            ],
        },
        "options": {
            "showHeader": True,
            "cellHeight": "sm",
            "frameIndex": 0,
            "footer": {"show": False, "reducer": ["sum"], "countRows": False},
        },
    }


def version_annotation(extra_selector: str) -> Json:
    """A marker while an application version (sqlcommenter tag `version`) is new.

    Needs `--metrics-tags` to include `version` (dbproxy_query_calls_by_tag_total); a
    version counts as new for 10 minutes after its first call through any selected proxy.
    """
    series = f'dbproxy_query_calls_by_tag_total{{tag="version", {extra_selector}}}'
    return {
        "name": "Deployments (version tag)",
        "datasource": PROM,
        "enable": True,
        "iconColor": "purple",
        "target": {
            "refId": "Anno",
            "expr": f"group by (value) ({series}) unless group by (value) ({series} offset 10m)",
            "interval": "1m",
        },
        "titleFormat": "version {{value}}",
        "textFormat": "first calls tagged version={{value}} (sqlcommenter)",
        "tagKeys": "value",
        "useValueForTime": False,
    }


def builtin_annotation() -> Json:
    return {
        "builtIn": 1,
        "datasource": GRAFANA,
        "enable": True,
        "hide": True,
        "iconColor": "rgba(0, 211, 255, 1)",
        "name": "Annotations & Alerts",
        "type": "dashboard",
    }


def query_variable(
    name: str, label: str, query: str, *, multi: bool = True, include_all: bool = True
) -> Json:
    variable: Json = {
        "type": "query",
        "name": name,
        "label": label,
        "datasource": PROM,
        "query": {"query": query, "refId": f"{name}-query", "qryType": 1},
        "refresh": 2,
        "sort": 1,
        "multi": multi,
        "includeAll": include_all,
        "options": [],
        "hide": 0,
    }
    if include_all:  # else Grafana selects the first value
        variable["allValue"] = ".*"
        variable["current"] = {"text": "All", "value": "$__all"}
    return variable


def common_variables() -> list[Json]:
    return [
        query_variable("instance", "Proxy", "label_values(dbproxy_build_info, instance)"),
        query_variable(
            "database",
            "Database",
            'label_values(dbproxy_query_duration_seconds_count{instance=~"$instance"}, database)',
        ),
        query_variable(
            "user",
            "User",
            'label_values(dbproxy_query_duration_seconds_count{instance=~"$instance", '
            'database=~"$database"}, user)',
        ),
    ]


def dashboard(
    uid: str, title: str, description: str, panels: list[Json], variables: list[Json]
) -> Json:
    other = TOP_UID if uid == OVERVIEW_UID else OVERVIEW_UID
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["dbproxy", "postgresql"],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-3h", "to": "now"},
        "timezone": "browser",
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "links": [
            {
                "title": "Query overview" if other == OVERVIEW_UID else "Top queries",
                "type": "link",
                "url": f"/d/{other}/{other}?${{instance:queryparam}}&${{database:queryparam}}"
                "&${user:queryparam}&${__url_time_range}",
                "icon": "dashboard",
                "tags": [],
                "asDropdown": False,
                "includeVars": False,
                "keepTime": False,
                "targetBlank": False,
                "tooltip": "",
            }
        ],
        "annotations": {
            "list": [builtin_annotation(), version_annotation('instance=~"$instance"')]
        },
        "templating": {"list": variables},
        "panels": panels,
    }


# --- Query overview ----------------------------------------------------------------------


def overview() -> Json:
    calls = f"dbproxy_query_duration_seconds_count{{{SEL}}}"
    rate_calls = f"sum(rate({calls}[$__rate_interval]))"
    buckets = (
        f"sum by (le) (rate(dbproxy_query_duration_seconds_bucket{{{SEL}}}[$__rate_interval]))"
    )
    health = 'instance=~"$instance"'
    lay = Layout()
    lay.add(
        stat(
            "Statements per second",
            rate_calls,
            "reqps",
            "Statements executed through the selected proxies (failed ones included).",
            thresholds((None, "blue")),
        ),
        6,
        4,
    )
    lay.add(
        stat(
            "Error ratio",
            f"sum(rate(dbproxy_query_errors_total{{{SEL}}}[$__rate_interval])) / {rate_calls}",
            "percentunit",
            "Share of statements that failed (any SQLSTATE).",
            thresholds((None, "green"), (0.01, "orange"), (0.05, "red")),
        ),
        6,
        4,
    )
    lay.add(
        stat(
            "p95 latency (all queries)",
            f"histogram_quantile(0.95, {buckets})",
            "s",
            "95th percentile of statement latency at the proxy, over every query.",
            thresholds((None, "green"), (0.05, "orange"), (0.5, "red")),
        ),
        6,
        4,
    )
    lay.add(
        stat(
            "Client connections",
            f"sum(dbproxy_client_connections{{{SEL}}})",
            "short",
            "Client sessions open through the selected proxies.",
            thresholds((None, "blue")),
        ),
        6,
        4,
    )

    lay.row("Throughput, errors, latency")
    lay.add(
        timeseries(
            "Statements per second by kind",
            [target(f"sum by (kind) (rate({calls}[$__rate_interval]))", legend="{{kind}}")],
            "reqps",
            "read = SELECT without locking; write = INSERT/UPDATE/DELETE/MERGE/COPY FROM/DDL and "
            "SELECT … FOR UPDATE; other = transaction control and session commands.",
            stack=True,
        ),
        12,
        8,
    )
    lay.add(
        timeseries(
            "Error ratio by SQLSTATE class",
            [
                target(
                    f"sum by (error_class) (rate(dbproxy_query_errors_total{{{SEL}}}[$__rate_interval]))"
                    f" / scalar({rate_calls})",
                    legend="{{error_class}}",
                )
            ],
            "percentunit",
            "Failed statements per class (e.g. integrity_constraint_violation = 23xxx) as a share "
            "of all statements.",
            stack=True,
        ),
        12,
        8,
    )
    lay.add(
        timeseries(
            "Latency percentiles (all queries)",
            [
                target(f"histogram_quantile({q}, {buckets})", ref, legend=f"p{int(q * 100)}")
                for ref, q in (("A", 0.5), ("B", 0.95), ("C", 0.99))
            ],
            "s",
            "Interpolated from dbproxy_query_duration_seconds buckets, summed over queries and "
            "proxies; see Top queries for the query behind a rise.",
        ),
        12,
        8,
    )
    lay.add(
        timeseries(
            "Database time per second by kind",
            [
                target(
                    f"sum by (kind) (rate(dbproxy_query_duration_seconds_sum{{{SEL}}}[$__rate_interval]))",
                    legend="{{kind}}",
                )
            ],
            "s",
            "Seconds of statement time per second (1 = one connection busy all the time).",
            stack=True,
        ),
        12,
        8,
    )

    lay.row("Transactions and connections")
    lay.add(
        timeseries(
            "Transactions per second by outcome",
            [
                target(
                    f"sum by (outcome) (rate(dbproxy_transactions_total{{{SEL}}}[$__rate_interval]))",
                    legend="{{outcome}}",
                )
            ],
            "ops",
            "Explicit transactions (BEGIN … COMMIT/ROLLBACK): commit, rollback, or error "
            "(ended by a failed statement).",
            stack=True,
        ),
        8,
        8,
    )
    lay.add(
        timeseries(
            "Transaction duration p50 / p95",
            [
                target(
                    f"histogram_quantile({q}, sum by (le) (rate("
                    f"dbproxy_transaction_duration_seconds_bucket{{{SEL}}}[$__rate_interval])))",
                    ref,
                    legend=f"p{int(q * 100)}",
                )
                for ref, q in (("A", 0.5), ("B", 0.95))
            ],
            "s",
            "From a transaction's first statement to its end; long ones hold locks and snapshots.",
        ),
        8,
        8,
    )
    lay.add(
        timeseries(
            "Client connections",
            [
                target(
                    f"sum by (instance) (dbproxy_client_connections{{{SEL}}})",
                    "A",
                    legend="open {{instance}}",
                ),
                target(
                    "sum by (instance) (rate(dbproxy_client_connections_opened_total"
                    f"{{{SEL}}}[$__rate_interval]))",
                    "B",
                    legend="opened/s {{instance}}",
                ),
                target(
                    "sum by (instance) (rate(dbproxy_client_connections_rejected_total"
                    f"{{{SEL}}}[$__rate_interval]))",
                    "C",
                    legend="rejected/s {{instance}}",
                ),
            ],
            "short",
            "Open sessions per proxy, sessions opened per second, and sessions the server refused "
            "(authentication failures: 28P01).",
        ),
        8,
        8,
    )

    lay.row("Proxy health")
    lay.add(
        timeseries(
            "Proxies up",
            [target(f'up{{job=~".*dbproxy.*", {health}}}', legend="{{instance}}")],
            "bool_yes_no",
            "1 while Prometheus scrapes the proxy; 0 is DBProxyUpstreamDown (scrape_failed).",
        ),
        8,
        7,
    )
    lay.add(
        timeseries(
            "Lost observations per second",
            [
                target(
                    f"sum by (instance) (rate(dbproxy_events_dropped_total{{{health}}}[$__rate_interval]))",
                    "A",
                    legend="events dropped {{instance}}",
                ),
                target(
                    "sum by (instance) (rate(dbproxy_fingerprints_overflow_total"
                    f"{{{health}}}[$__rate_interval]))",
                    "B",
                    legend="fingerprint overflow {{instance}}",
                ),
                target(
                    f"sum by (instance) (rate(dbproxy_observer_errors_total{{{health}}}[$__rate_interval]))",
                    "C",
                    legend="observer errors {{instance}}",
                ),
            ],
            "ops",
            "Statements the statistics missed (queue full: DBProxyEventsDropped), folded into "
            "__other__ (aggregator full), or observation errors. Client traffic is never affected.",
        ),
        8,
        7,
    )
    lay.add(
        timeseries(
            "Upstream connect errors per second",
            [
                target(
                    "sum by (instance) (rate(dbproxy_upstream_connect_errors_total"
                    f"{{{health}}}[$__rate_interval]))",
                    legend="{{instance}}",
                )
            ],
            "ops",
            "Failed connections from the proxy to PostgreSQL (DBProxyUpstreamDown).",
        ),
        8,
        7,
    )
    lay.add(
        timeseries(
            "Bytes relayed per second",
            [
                target(
                    f"sum by (direction) (rate(dbproxy_bytes_total{{{health}}}[$__rate_interval]))",
                    legend="{{direction}}",
                )
            ],
            "Bps",
            "Traffic through the selected proxies, both directions.",
        ),
        12,
        7,
    )
    lay.add(
        timeseries(
            "Fingerprints tracked and event queue",
            [
                target(
                    f"sum by (instance) (dbproxy_fingerprints_tracked{{{health}}})",
                    "A",
                    legend="tracked {{instance}}",
                ),
                target(
                    f"sum by (instance) (dbproxy_event_queue_capacity{{{health}}})",
                    "B",
                    legend="queue capacity {{instance}}",
                ),
            ],
            "short",
            "(fingerprint, database, user) rows per proxy (bounded by --max-fingerprints) and the "
            "event queue's capacity (--sink-capacity).",
        ),
        12,
        7,
    )
    return dashboard(
        OVERVIEW_UID,
        "dbproxy / Query overview",
        "Statements per second, errors, latency, transactions, connections and the health of "
        "every dbproxy instance. Drill into queries on the Top queries dashboard.",
        lay.panels,
        common_variables(),
    )


# --- Top queries -------------------------------------------------------------------------


def top_queries() -> Json:
    lay = Layout()
    count = f"dbproxy_query_duration_seconds_count{{{SEL}}}"
    total = f"dbproxy_query_duration_seconds_sum{{{SEL}}}"
    bucket = f"dbproxy_query_duration_seconds_bucket{{{SEL}}}"
    rows = f"dbproxy_query_rows_total{{{SEL}}}"
    errors = f"dbproxy_query_errors_total{{{SEL}}}"
    by_fp = "sum by (fingerprint)"
    metrics = {
        "total": (f"{by_fp} (rate({total}[$__range]))", "s", "Time/s"),
        "calls": (f"{by_fp} (rate({count}[$__range]))", "reqps", "Calls/s"),
        "p95": (
            f"histogram_quantile(0.95, sum by (fingerprint, le) (rate({bucket}[$__range])))",
            "s",
            "p95",
        ),
        "rows": (
            f"{by_fp} (rate({rows}[$__range])) / {by_fp} (rate({count}[$__range]))",
            "short",
            "Rows/call",
        ),
        "errors": (f"{by_fp} (rate({errors}[$__range]))", "reqps", "Errors/s"),
    }
    lay.add(
        {
            "type": "text",
            "title": "How to read this dashboard",
            "options": {
                "mode": "markdown",
                "content": (
                    "Each table ranks query **fingerprints** (the same query whatever its "
                    "literals) over the time range, summed over the selected proxies. Click a "
                    "fingerprint to drill down below: latency heatmap with **exemplars** (the "
                    "diamonds link to the trace in Tempo), rows, errors, today vs a day ago. "
                    "Markers are new application versions (sqlcommenter tag `version`, exported "
                    "with `--metrics-tags version`)."
                ),
                "code": {"language": "plaintext", "showLineNumbers": False, "showMiniMap": False},
            },
        },
        24,
        3,
    )
    lay.row("Top queries over the time range (summed over the selected proxies)")
    for key, title, desc in (
        ("total", "Top by total time", "Database time per second: what costs the server most."),
        ("calls", "Top by calls", "Statements per second."),
        ("p95", "Top by p95 latency", "Slowest queries by their 95th percentile."),
        (
            "rows",
            "Top by rows per call",
            "Rows returned or affected per call (N+1 or unbounded scans).",
        ),
        ("errors", "Top by errors", "Failed statements per second (any SQLSTATE)."),
    ):
        expr, unit, display = metrics[key]
        lay.add(
            table(
                title,
                [target(f"topk($limit, {expr}) {JOIN}", instant=True, fmt="table")],
                desc + " Joined with dbproxy_query_info for the normalized text.",
                [column("Value", unit, display)],
                display,
                hidden=("summary",),
            ),
            12 if key != "errors" else 24,
            9,
        )
    lay.row("Before / after: now vs a day earlier (offset 1d)")
    p95_now = metrics["p95"][0]
    p95_then = p95_now.replace("[$__range])", "[$__range] offset 1d)")
    calls_now = metrics["calls"][0]
    calls_then = calls_now.replace("[$__range])", "[$__range] offset 1d)")
    lay.add(
        table(
            "p95 and calls now vs a day ago",
            [
                target(f"topk($limit, {p95_now}) {JOIN}", "A", instant=True, fmt="table"),
                target(p95_then, "B", instant=True, fmt="table"),
                target(f"({p95_now}) / ({p95_then})", "C", instant=True, fmt="table"),
                target(calls_now, "D", instant=True, fmt="table"),
                target(calls_then, "E", instant=True, fmt="table"),
            ],
            "The slowest queries by p95 now, with their p95 and calls per second over the same "
            "time range a day earlier: a deploy's regressions and new queries at a glance "
            "(an empty 'a day ago' cell = the query did not run then).",
            [
                column("Value #A", "s", "p95 now"),
                column("Value #B", "s", "p95 a day ago"),
                column(
                    "Value #C",
                    "none",
                    "p95 ratio",
                    [
                        {"id": "decimals", "value": 2},
                        {
                            "id": "thresholds",
                            "value": thresholds((None, "green"), (1.5, "orange"), (2, "red")),
                        },
                        {"id": "custom.cellOptions", "value": {"type": "color-text"}},
                    ],
                ),
                column("Value #D", "reqps", "calls/s now"),
                column("Value #E", "reqps", "calls/s a day ago"),
            ],
            "p95 now",
            hidden=("summary",),
        ),
        24,
        9,
    )

    lay.row("Query $fingerprint")
    tempo_search = "/explore?schemaVersion=1&panes=" + quote(
        json.dumps(
            {
                "trace": {
                    "datasource": "tempo",
                    "queries": [
                        {
                            "refId": "A",
                            "datasource": {"type": "tempo", "uid": "tempo"},
                            "queryType": "traceql",
                            "query": '{ span.dbproxy.fingerprint = "$fingerprint" }',
                        }
                    ],
                    "range": {"from": "now-1h", "to": "now"},
                }
            },
            separators=(",", ":"),
        ),
        safe="$",
    )
    trace_links = [link("Traces of this query in Tempo", tempo_search)]
    info_panel = table(
        "Normalized query",
        [target(f'{INFO}{{fingerprint="$fingerprint"}}', instant=True, fmt="table")],
        "The fingerprint's normalized text (constants become numbered placeholders) from dbproxy_query_info.",
        [],
        "query",
        hidden=("Value", "__name__"),
    )
    info_panel["links"] = trace_links
    lay.add(info_panel, 24, 4)
    fp_bucket = f"dbproxy_query_duration_seconds_bucket{{{FP_SEL}}}"
    heatmap = {
        "type": "heatmap",
        "title": "Latency heatmap with exemplars",
        "description": "Calls per latency bucket. Exemplar diamonds are statements that had a "
        "span (traceparent from the sqlcommenter, --trace-slow-ms or sampling): click one for "
        "its trace in Tempo.",
        "datasource": PROM,
        "targets": [
            target(
                f"sum by (le) (increase({fp_bucket}[$__rate_interval]))",
                legend="{{le}}",
                fmt="heatmap",
                exemplar=True,
            )
        ],
        "links": trace_links,
        "fieldConfig": {
            "defaults": {
                "unit": "short",
                "custom": {
                    "hideFrom": {"legend": False, "tooltip": False, "viz": False},
                    "scaleDistribution": {"type": "linear"},
                },
            },
            "overrides": [],
        },
        "options": {
            "calculate": False,
            "cellGap": 1,
            "color": {
                "mode": "scheme",
                "scheme": "Oranges",
                "fill": "dark-orange",
                "scale": "exponential",
                "exponent": 0.5,
                "steps": 64,
                "reverse": False,
            },
            "exemplars": {"color": "rgba(255,0,255,0.7)"},
            "filterValues": {"le": 1e-9},
            "legend": {"show": True},
            "rowsFrame": {"layout": "auto"},
            "showValue": "never",
            "tooltip": {"mode": "single", "yHistogram": False, "showColorScale": False},
            "yAxis": {"axisPlacement": "left", "reverse": False, "unit": "s"},
            "cellValues": {"unit": "short"},
        },
    }
    lay.add(heatmap, 12, 9)
    lay.add(
        timeseries(
            "Latency p50 / p95 / p99 (exemplars → Tempo)",
            [
                target(
                    f"histogram_quantile({q}, sum by (le) (rate({fp_bucket}[$__rate_interval])))",
                    ref,
                    legend=f"p{int(q * 100)}",
                    exemplar=ref == "B",
                )
                for ref, q in (("A", 0.5), ("B", 0.95), ("C", 0.99))
            ],
            "s",
            "Percentiles of this query over the selected proxies; exemplars link to traces.",
            links=trace_links,
        ),
        12,
        9,
    )
    lay.add(
        timeseries(
            "Calls per second by proxy",
            [
                target(
                    "sum by (instance) (rate(dbproxy_query_duration_seconds_count"
                    f"{{{FP_SEL}}}[$__rate_interval]))",
                    legend="{{instance}}",
                )
            ],
            "reqps",
            "The same fingerprint id on every proxy: the stacked total is the query's rate.",
            stack=True,
        ),
        8,
        8,
    )
    lay.add(
        timeseries(
            "Rows per second and per call",
            [
                target(
                    f"sum(rate(dbproxy_query_rows_total{{{FP_SEL}}}[$__rate_interval]))",
                    "A",
                    legend="rows/s",
                ),
                target(
                    f"sum(rate(dbproxy_query_rows_total{{{FP_SEL}}}[$__rate_interval])) / "
                    f"sum(rate(dbproxy_query_duration_seconds_count{{{FP_SEL}}}[$__rate_interval]))",
                    "B",
                    legend="rows/call",
                ),
            ],
            "short",
            "Rows returned or affected: a jump in rows per call often explains a slower plan.",
        ),
        8,
        8,
    )
    lay.add(
        timeseries(
            "Errors per second by SQLSTATE",
            [
                target(
                    "sum by (sqlstate, error_class) (rate(dbproxy_query_errors_total"
                    f"{{{FP_SEL}}}[$__rate_interval]))",
                    legend="{{sqlstate}} {{error_class}}",
                )
            ],
            "reqps",
            "Failed calls of this query by SQLSTATE (messages are never exported).",
            stack=True,
        ),
        8,
        8,
    )
    lay.add(
        timeseries(
            "p95 and calls: now vs a day earlier",
            [
                target(
                    f"histogram_quantile(0.95, sum by (le) (rate({fp_bucket}[$__rate_interval])))",
                    "A",
                    legend="p95 now",
                ),
                target(
                    f"histogram_quantile(0.95, sum by (le) (rate({fp_bucket}[$__rate_interval] offset 1d)))",
                    "B",
                    legend="p95 a day ago",
                ),
                target(
                    f"sum(rate(dbproxy_query_duration_seconds_count{{{FP_SEL}}}[$__rate_interval]))",
                    "C",
                    legend="calls/s now",
                ),
                target(
                    "sum(rate(dbproxy_query_duration_seconds_count"
                    f"{{{FP_SEL}}}[$__rate_interval] offset 1d))",
                    "D",
                    legend="calls/s a day ago",
                ),
            ],
            "s",
            "Dashed: the same time a day earlier (offset 1d), the baseline of "
            "DBProxyQueryLatencyRegression. Calls are on the right axis.",
        ),
        12,
        8,
    )
    before_after = lay.panels[-1]
    before_after["fieldConfig"]["overrides"] = [
        {
            "matcher": {"id": "byRegexp", "options": ".*a day ago"},
            "properties": [
                {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}},
            ],
        },
        {
            "matcher": {"id": "byRegexp", "options": "calls/s.*"},
            "properties": [
                {"id": "unit", "value": "reqps"},
                {"id": "custom.axisPlacement", "value": "right"},
            ],
        },
    ]
    lay.add(
        timeseries(
            "Calls per second by application and version",
            [
                target(
                    "sum by (tag, value) (rate(dbproxy_query_calls_by_tag_total"
                    '{instance=~"$instance", fingerprint="$fingerprint", tag=~"application|version"}'
                    "[$__rate_interval]))",
                    legend="{{tag}}={{value}}",
                )
            ],
            "reqps",
            "Attribution from application_name and the sqlcommenter tags (needs --metrics-tags "
            "application,version).",
            stack=True,
        ),
        12,
        8,
    )
    lay.add(
        {
            "type": "logs",
            "title": "Slow statements and errors of this query (Loki)",
            "description": "dbproxy's JSON query log (--query-log -, --log-slow-ms) tailed by "
            "Alloy; trace_id links to Tempo.",
            "datasource": LOKI,
            "targets": [
                {
                    "datasource": LOKI,
                    "refId": "A",
                    "expr": '{job="dbproxy"} | json | fingerprint = "$fingerprint"',
                    "queryType": "range",
                    "editorMode": "code",
                }
            ],
            "fieldConfig": {"defaults": {"unit": "none"}, "overrides": []},
            "options": {
                "showTime": True,
                "showLabels": False,
                "showCommonLabels": False,
                "wrapLogMessage": True,
                "prettifyLogMessage": False,
                "enableLogDetails": True,
                "showLogContextToggle": True,
                "enableInfiniteScrolling": False,
                "dedupStrategy": "none",
                "sortOrder": "Descending",
            },
        },
        24,
        8,
    )
    variables = [
        *common_variables(),
        query_variable(
            "fingerprint",
            "Fingerprint",
            f"label_values(dbproxy_query_duration_seconds_count{{{SEL}}}, fingerprint)",
            multi=False,
            include_all=False,
        ),
        {
            "type": "custom",
            "name": "limit",
            "label": "Top",
            "query": "10,20,50",
            "current": {"text": "10", "value": "10"},
            "options": [{"text": v, "value": v, "selected": v == "10"} for v in ("10", "20", "50")],
            "multi": False,
            "includeAll": False,
            "hide": 0,
        },
    ]
    return dashboard(
        TOP_UID,
        "dbproxy / Top queries",
        "The queries that cost the most (time, calls, p95, rows, errors) with their normalized "
        "text, a per-fingerprint drill-down with exemplars linked to Tempo traces, and today vs "
        "a day earlier.",
        lay.panels,
        variables,
    )


def render() -> dict[str, str]:
    return {
        f"{board['uid']}.json": json.dumps(board, indent=2, ensure_ascii=False) + "\n"
        for board in (overview(), top_queries())
    }


def main(argv: list[str]) -> int:
    files = render()
    if "--check" in argv:
        stale = [
            name
            for name, text in files.items()
            if not (OUT / name).is_file() or (OUT / name).read_text() != text
        ]
        if stale:
            print(f"stale dashboards (run {Path(__file__).name}): {', '.join(stale)}")
            return 1
        return 0
    OUT.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (OUT / name).write_text(text)
        print(f"wrote {OUT / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
