"""The provisioned Grafana dashboards: schema, datasources, units, variables, alert links.

Types: deploy/tools/check_dashboards.mjs type-checks each dashboard with the TypeScript
compiler against @grafana/schema (the version of the Grafana image compose.yaml pins).
The rest is checked here; that every PromQL expression runs and returns data is
tests/deploy/test_prometheus_stack.py (a real Prometheus scraping two proxies).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.files import (
    DASHBOARDS,
    DEPLOY,
    PROVISIONING,
    ROOT,
    RULES,
    all_panels,
    load_dashboards,
)

#: `$name`, `${name}`, `${name:format}`, `[[name]]` (names start with a letter or `_`, so
#: `$1` in a regex replacement or normalized SQL is not a variable).
VARIABLE_REF = re.compile(
    r"\$\{([A-Za-z_][\w.]*)(?::[^}]*)?\}|\$([A-Za-z_]\w*)|\[\[([A-Za-z_]\w*)\]\]"
)
#: Panels that show no numbers (no unit to set).
UNITLESS_PANELS = {"text", "logs"}


def _datasources() -> dict[str, str]:
    config = yaml.safe_load((PROVISIONING / "datasources" / "datasources.yaml").read_text())
    return {ds["uid"]: ds["type"] for ds in config["datasources"]}


def _strings(node: Any) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for value in node.values() for s in _strings(value)]
    if isinstance(node, list):
        return [s for value in node for s in _strings(value)]
    return []


def test_dashboards_match_grafana_schema(node_tools: Path) -> None:
    files = [str(p) for p in sorted(DASHBOARDS.glob("*.json"))]
    result = subprocess.run(
        ["node", str(node_tools / "check_dashboards.mjs"), *files],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(files)} dashboard(s) match @grafana/schema" in result.stdout


def test_the_schema_check_rejects_a_broken_dashboard(node_tools: Path, tmp_path: Path) -> None:
    """The type check is not vacuous: an unknown key and a bad enum value fail it."""
    text = (DASHBOARDS / "dbproxy-overview.json").read_text()
    assert '"displayMode": "table"' in text and '"graphTooltip": 1' in text
    broken = text.replace('"displayMode": "table"', '"displayMode": "tabel"', 1)
    broken = broken.replace('"graphTooltip": 1', '"graphTooltip": 1, "graphTooltipp": 1', 1)
    (tmp_path / "broken.json").write_text(broken)
    result = subprocess.run(
        ["node", str(node_tools / "check_dashboards.mjs"), str(tmp_path / "broken.json")],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 1
    assert "'\"tabel\"' is not assignable" in result.stderr
    assert "graphTooltipp" in result.stderr


def test_generated_dashboards_are_up_to_date() -> None:
    result = subprocess.run(
        [sys.executable, str(DEPLOY / "grafana" / "generate_dashboards.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_two_dashboards_exist_with_their_uids() -> None:
    uids = {board["uid"] for board in load_dashboards().values()}
    assert uids == {"dbproxy-overview", "dbproxy-top-queries"}
    for name, board in load_dashboards().items():
        assert name == f"{board['uid']}.json"


def test_every_datasource_reference_is_provisioned_with_its_type() -> None:
    datasources = _datasources()
    assert datasources["prometheus"] == "prometheus"
    for name, board in load_dashboards().items():
        refs: list[tuple[str, dict[str, str]]] = []
        for panel in all_panels(board):
            refs.append((panel["title"], panel.get("datasource") or {}))
            if panel["type"] == "text":
                continue
            assert panel.get("targets"), f"{name}: panel {panel['title']!r} has no query"
            refs += [(panel["title"], t["datasource"]) for t in panel["targets"]]
        for variable in board["templating"]["list"]:
            if "datasource" in variable:
                refs.append((f"${variable['name']}", variable["datasource"]))
        for annotation in board["annotations"]["list"]:
            refs.append((annotation["name"], annotation["datasource"]))
        for where, ref in refs:
            if where == "How to read this dashboard":
                continue
            assert ref, f"{name}: {where!r} has no datasource"
            if ref["uid"] == "-- Grafana --":
                continue  # the built-in annotations
            assert ref["uid"] in datasources, f"{name}: {where!r} uses unknown datasource {ref}"
            assert datasources[ref["uid"]] == ref["type"], f"{name}: {where!r}: {ref}"


def test_every_panel_has_units() -> None:
    for name, board in load_dashboards().items():
        for panel in all_panels(board):
            if panel["type"] in UNITLESS_PANELS:
                continue
            unit = panel["fieldConfig"]["defaults"].get("unit")
            assert unit, f"{name}: panel {panel['title']!r} has no unit"
            if panel["type"] != "table":
                continue
            # Table value columns ("Value", or "Value #<refId>" when several queries are
            # merged) each get their own unit: calls/s and seconds in one table.
            overridden = {
                o["matcher"]["options"]: {p["id"]: p["value"] for p in o["properties"]}
                for o in panel["fieldConfig"]["overrides"]
                if o["matcher"]["id"] == "byName"
            }
            targets = panel["targets"]
            columns = ["Value"] if len(targets) == 1 else [f"Value #{t['refId']}" for t in targets]
            excluded = panel["transformations"][1]["options"]["excludeByName"]
            for col in columns:
                if excluded.get(col):
                    continue
                assert overridden.get(col, {}).get("unit"), (
                    f"{name}: table {panel['title']!r} column {col} has no unit"
                )


def test_every_variable_reference_is_defined() -> None:
    for name, board in load_dashboards().items():
        defined = {v["name"] for v in board["templating"]["list"]}
        used: set[str] = set()
        for text in (
            _strings(board["panels"])
            + _strings(board["annotations"])
            + _strings(board["templating"])
            + _strings(board["links"])
        ):
            for match in VARIABLE_REF.finditer(text):
                var = next(g for g in match.groups() if g)
                used.add(var.split(".")[0])
        builtin = {v for v in used if v.startswith("__")}
        assert used - builtin <= defined, f"{name}: undefined variables {used - builtin - defined}"
        # and every variable is used by some query (no dead selectors)
        assert defined <= used, f"{name}: unused variables {defined - used}"


def test_every_query_filters_by_the_selected_instances() -> None:
    """A dashboard scoped to one proxy must not silently show all of them."""
    for name, board in load_dashboards().items():
        for panel in all_panels(board):
            for t in panel.get("targets", []):
                if t["datasource"]["type"] != "prometheus":
                    continue
                expr = t["expr"]
                assert 'instance=~"$instance"' in expr or expr.startswith(
                    "fingerprint:dbproxy_query_info:one{"
                ), f"{name}: {panel['title']!r}: {expr}"


def test_every_alert_links_to_a_real_dashboard() -> None:
    boards = {board["uid"]: board for board in load_dashboards().values()}
    groups = yaml.safe_load(RULES.read_text())["groups"]
    alerts = [r for g in groups for r in g["rules"] if "alert" in r]
    assert alerts
    for alert in alerts:
        link = alert["annotations"]["dashboard"]
        match = re.fullmatch(r"/d/([\w-]+)/[\w-]+(?:\?(.*))?", link)
        assert match, f"{alert['alert']}: dashboard annotation {link!r} is not /d/<uid>/<slug>"
        uid, params = match.groups()
        assert uid in boards, f"{alert['alert']}: no dashboard with uid {uid}"
        names = {v["name"] for v in boards[uid]["templating"]["list"]}
        for param in (params or "").split("&"):
            if param.startswith("var-"):
                var = param[4:].split("=")[0]
                assert var in names, f"{alert['alert']}: {uid} has no variable {var}"


def test_provisioning_points_at_the_dashboards() -> None:
    config = yaml.safe_load((PROVISIONING / "dashboards" / "dashboards.yaml").read_text())
    [provider] = config["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards/dbproxy"
    prometheus = next(
        ds
        for ds in yaml.safe_load((PROVISIONING / "datasources" / "datasources.yaml").read_text())[
            "datasources"
        ]
        if ds["uid"] == "prometheus"
    )
    [dest] = prometheus["jsonData"]["exemplarTraceIdDestinations"]
    # dbproxy's exemplars are labelled trace_id (export/prometheus.py)
    assert dest == {
        "name": "trace_id",
        "datasourceUid": "tempo",
        "urlDisplayLabel": "Trace in Tempo",
    }
