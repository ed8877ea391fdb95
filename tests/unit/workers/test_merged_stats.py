"""Worker 0's merged view: the collector and the API read every worker's statistics
through their usual seams; the stats channel carries dumps over a Unix socket."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from dbproxy.config import load_config
from dbproxy.errors import ConfigError
from dbproxy.export.http import Request, Response, Route, export_routes
from dbproxy.export.prometheus import DbproxyCollector
from dbproxy.export.workers import WorkersCollector
from dbproxy.observe.aggregator import Aggregator
from dbproxy.observe.dump import ProxyTotals, SinkTotals, WorkerDump
from dbproxy.observe.stats import StatsSnapshot
from dbproxy.protocol.events import StatementFinished
from dbproxy.sql.cache import Fingerprinter
from dbproxy.workers.channel import ChannelError, StatsChannelServer, fetch_dump, request_reset
from dbproxy.workers.merged import MergedStats

EPOCH = 1_700_000_000_000_000_000
TOKEN = "a-token-of-sixteen-chars"


def statement(text: str, duration_ns: int = 2_000_000, session_id: int = 1) -> StatementFinished:
    return StatementFinished(
        session_id=session_id,
        user="u",
        database="d",
        application_name="app",
        protocol="simple",
        text=text,
        statement_name=None,
        portal_name=None,
        param_type_oids=(),
        function_oid=None,
        start_ns=0,
        end_ns=duration_ns,
        duration_ns=duration_ns,
        start_epoch_ns=EPOCH,
        rows=1,
        rolled_back=False,
        in_transaction=False,
        command="SELECT",
    )


class Worker:
    """One worker's statistics, as App.local_dump() reports them."""

    def __init__(self, index: int, accepted: int) -> None:
        self.index = index
        self.aggregator = Aggregator(fingerprinter=Fingerprinter())
        self.fingerprinter = Fingerprinter()
        self.accepted = accepted

    def dump(self) -> WorkerDump:
        return WorkerDump(
            worker=self.index,
            pid=os.getpid(),
            snapshot=self.aggregator.snapshot(top=None),
            proxy=ProxyTotals(connections_accepted=self.accepted, bytes_from_client=100),
            sink=SinkTotals(accepted=1, dropped=2, capacity=10),
            fingerprinter=self.fingerprinter.stats,
        )


class FakePeers:
    def __init__(self, workers: list[Worker]) -> None:
        self.workers = workers
        self.down: set[int] = set()
        self.resets = 0

    @property
    def count(self) -> int:
        return len(self.workers) + 1

    @property
    def restarts(self) -> int:
        return 3

    async def dumps(self) -> tuple[list[WorkerDump], int]:
        return [w.dump() for w in self.workers if w.index not in self.down], len(self.down)

    async def reset(self) -> int:
        self.resets += 1
        for w in self.workers:
            w.aggregator.reset()
        return 0


def build(local: Worker, peers: FakePeers) -> tuple[MergedStats, dict[str, Route]]:
    merged = MergedStats(local.dump, local.aggregator.reset, peers, tracing=False, query_log=False)
    registry = CollectorRegistry()
    registry.register(WorkersCollector(merged))
    collector = DbproxyCollector(
        merged,
        proxy=merged.proxy,
        sink=merged.sink,
        fingerprinter=merged.fingerprinter,
        max_fingerprints=1,
    )
    registry.register(collector)
    routes = export_routes(
        stats=merged,
        ready=lambda: (True, "ok"),
        registry=registry,
        collector=collector,
        api_token=TOKEN,
        ui=False,
    )
    return merged, {r.pattern: r for r in merged.wrap_routes(routes)}


def request(method: str = "GET", **headers: str) -> Request:
    return Request(method=method, path="/", query=(), headers=headers)


def samples(response: Response) -> dict[str, float]:
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(response.body.decode()):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}"] = s.value
    return out


async def test_metrics_and_api_read_every_worker_merged() -> None:
    local, other = Worker(0, accepted=2), Worker(1, accepted=5)
    peers = FakePeers([other])
    merged, routes = build(local, peers)
    local.aggregator.consume([statement("SELECT 1"), statement("SELECT * FROM t")])
    other.aggregator.consume([statement("SELECT 2"), statement("SELECT 3", 70_000_000)] * 2)

    m = samples(await routes["/metrics"].handler(request()))
    select = [k for k in m if k.startswith("dbproxy_query_duration_seconds_count{")]
    # one fingerprint exported (max_fingerprints=1), the other folded, after merging
    assert sorted(m[k] for k in select) == [1.0, 5.0]
    assert any("fingerprint=__other__" in k for k in select)
    assert (
        m[
            "dbproxy_query_duration_seconds_bucket{database=d,fingerprint="
            + select_id(merged)
            + ",kind=read,le=0.1,operation=SELECT,user=u}"
        ]
        == 5.0
    )
    assert m["dbproxy_connections_accepted_total{}"] == 7
    assert m["dbproxy_bytes_total{direction=client_to_server}"] == 200
    assert m["dbproxy_events_dropped_total{}"] == 4
    assert m["dbproxy_workers{}"] == 2 and m["dbproxy_workers_configured{}"] == 2
    assert m["dbproxy_worker_restarts_total{}"] == 3
    assert m["dbproxy_worker_connections_accepted_total{worker=0}"] == 2
    assert m["dbproxy_worker_connections_accepted_total{worker=1}"] == 5
    assert m["dbproxy_worker_scrape_errors_total{}"] == 0

    # a worker that does not answer is left out and counted
    peers.down.add(1)
    m = samples(await routes["/metrics"].handler(request()))
    assert m["dbproxy_workers{}"] == 1 and m["dbproxy_worker_scrape_errors_total{}"] == 1
    assert sum(v for k, v in m.items() if k.startswith("dbproxy_query_duration_seconds_count")) == 2
    peers.down.clear()

    response = await routes["/api/queries"].handler(request())
    assert b'"calls":5' in response.body and b'"total":2' in response.body


def select_id(merged: MergedStats) -> str:
    snap: StatsSnapshot = merged.snapshot(top=1)
    return next(q.fingerprint for q in snap.queries if q.fingerprint != "__other__")


async def test_reset_reaches_the_other_workers_only_when_authorized() -> None:
    from dbproxy.export.api import ApiError

    local, other = Worker(0, 0), Worker(1, 0)
    peers = FakePeers([other])
    merged, routes = build(local, peers)
    other.aggregator.consume([statement("SELECT 2")])
    with pytest.raises(ApiError):
        await routes["/api/reset"].handler(request("POST", authorization="Bearer wrong"))
    await merged.refresh()
    assert peers.resets == 0 and merged.snapshot().queries
    ok = await routes["/api/reset"].handler(request("POST", authorization=f"Bearer {TOKEN}"))
    assert ok.status == 200 and peers.resets == 1
    await merged.refresh()
    assert merged.snapshot().queries == ()


async def test_stats_channel_round_trip_reset_and_timeout(tmp_path: Path) -> None:
    worker = Worker(1, accepted=9)
    worker.aggregator.consume([statement("SELECT 1")])
    server = StatsChannelServer(
        str(tmp_path / "w.sock"), dump=worker.dump, reset=worker.aggregator.reset
    )
    await server.start()
    try:
        assert (tmp_path / "w.sock").stat().st_mode & 0o777 == 0o600
        dump = await fetch_dump(server.path, 5)
        assert dump.snapshot.queries == worker.dump().snapshot.queries
        assert dump.proxy.connections_accepted == 9
        await request_reset(server.path, 5)
        assert (await fetch_dump(server.path, 5)).snapshot.queries == ()
    finally:
        await server.close()
    with pytest.raises(ChannelError):
        await fetch_dump(server.path, 1)  # nobody listens

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)
        writer.close()

    mute = await asyncio.start_unix_server(silent, str(tmp_path / "mute.sock"))
    try:
        with pytest.raises(ChannelError, match=r"no answer within 0\.2s"):
            await fetch_dump(str(tmp_path / "mute.sock"), 0.2)
    finally:
        mute.close()


def test_workers_setting() -> None:
    assert load_config({}, {}).workers == 1
    assert load_config({"workers": "3"}, {}).workers == 3
    assert load_config({}, {"DBPROXY_WORKERS": "auto"}).workers == (os.cpu_count() or 1)
    for bad in ("0", "-1", "many", "1000"):
        with pytest.raises(ConfigError, match="workers"):
            load_config({"workers": bad}, {})
