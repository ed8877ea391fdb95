"""The inspector's decisions on drained events, without a server: what it plans, what it
samples (with which values), what it records as slow samples."""

from __future__ import annotations

import asyncio
from typing import Any

from dbproxy.inspect.inspector import Inspector, InspectSettings
from dbproxy.protocol.events import SessionOpened, StatementFinished
from dbproxy.sql.cache import Fingerprinter


def _stmt(text: str, *, ms: float = 1.0, app: str = "web", **kw: Any) -> StatementFinished:
    fields: dict[str, Any] = {
        "session_id": 7,
        "user": "u",
        "database": "db",
        "application_name": app,
        "protocol": "simple",
        "text": text,
        "statement_name": None,
        "portal_name": None,
        "param_type_oids": (),
        "function_oid": None,
        "start_ns": 0,
        "end_ns": int(ms * 1e6),
        "duration_ns": int(ms * 1e6),
        "start_epoch_ns": 1_700_000_000 * 10**9,
        "rows": 1,
        "rolled_back": False,
        "in_transaction": False,
        "command": "SELECT",
    }
    fields.update(kw)
    return StatementFinished(**fields)


def _inspector(**settings: Any) -> tuple[Inspector, asyncio.Queue[Any]]:
    inspector = Inspector(
        InspectSettings(dsn="postgresql://inspect@localhost/postgres", **settings),
        fingerprinter=Fingerprinter(),
        rng=lambda: 0.0,
        clock=lambda: 1000.0,
    )
    queue: asyncio.Queue[Any] = asyncio.Queue()
    inspector._queue = queue
    return inspector, queue


def _jobs(queue: asyncio.Queue[Any]) -> list[Any]:
    out = []
    while not queue.empty():
        out.append(queue.get_nowait())
    return out


def test_slow_statements_are_planned_with_literal_free_text() -> None:
    inspector, queue = _inspector(explain_slow_ms=100.0)
    inspector.consume(
        [
            _stmt("SELECT * FROM t WHERE name = 'secret'", ms=5),
            _stmt("SELECT * FROM t WHERE name = 'secret2'", ms=500),
        ]
    )
    (job,) = _jobs(queue)
    assert type(job).__name__ == "_PlanJob"
    assert job.text == "SELECT * FROM t WHERE name = $1" and job.params == 1
    assert "secret" not in repr(job)


def test_sampling_only_plain_reads_and_with_their_values() -> None:
    inspector, queue = _inspector(explain_slow_ms=None, sample_analyze=1.0, exclude=("hidden",))
    inspector.consume(
        [
            SessionOpened(
                session_id=7,
                user="u",
                database="db",
                application_name="web",
                backend_pid=1,
                server_version="18",
                protocol_version=(3, 0),
                at_ns=0,
                at_epoch_ns=0,
                client_address="10.0.0.5:5555",
            ),
            _stmt("SELECT qty FROM t WHERE id = 41"),
            _stmt("UPDATE t SET qty = 1 WHERE id = 2", command="UPDATE"),
            _stmt("SELECT * FROM t WHERE id = 3 FOR UPDATE"),
            _stmt("SELECT * FROM hidden WHERE id = 4"),
            _stmt("SELECT 1 FROM t WHERE id = 5", app="dbproxy-inspect"),
            _stmt("SELECT * FROM t WHERE id = $1", protocol="extended", param_values=("9",)),
            _stmt("SELECT * FROM t WHERE a = $1", protocol="extended", param_values=None),
        ]
    )
    jobs = _jobs(queue)
    assert [type(j).__name__ for j in jobs] == ["_SampleJob", "_SampleJob"]
    assert jobs[0].statement.literals == ("41",) and jobs[0].bind_values == ()
    assert jobs[1].bind_values == ("9",) and jobs[1].statement.literals == ()
    assert "41" not in repr(jobs[0]) and "'9'" not in repr(jobs[1])
    assert inspector.counts.jobs[("sample", "skipped")] == 1  # no Bind values known
    (fp_id,) = {key[0] for key in inspector._keys if "qty FROM" in str(inspector._keys[key].text)}
    (sample,) = inspector.store.slowest(fp_id, "db")
    assert sample.client == "10.0.0.5:5555" and sample.application_name == "web"


def test_rate_limits_hold_samples_back() -> None:
    inspector, queue = _inspector(
        explain_slow_ms=None, sample_analyze=1.0, samples_per_minute=2, sample_interval_s=0.0
    )
    inspector.consume([_stmt(f"SELECT * FROM t WHERE id = {i}") for i in range(10)])
    assert len(_jobs(queue)) == 2


def test_search_path_is_the_clients_with_its_user() -> None:
    from dbproxy.inspect.side import search_path_for

    assert search_path_for("alice") == '"alice", public'
    assert search_path_for('al"ice', '"$user", public') == '"al""ice", public'
    assert search_path_for("bob", "sales, public") == "sales, public"


async def test_a_failed_sample_never_logs_its_message(caplog: Any) -> None:
    class FailingPools:
        async def volatile_functions(self, database: str, names: Any) -> set[str]:
            return set()

        async def generic_plan(self, *args: Any) -> Any:
            return [{"Plan": {"Node Type": "Seq Scan", "Relation Name": "t"}}], 18

        async def sample_analyze(self, *args: Any) -> Any:
            raise ValueError('invalid input syntax for type integer: "zz-secret-value"')

        async def close(self) -> None:
            return None

    inspector = Inspector(
        InspectSettings(dsn="postgresql://i@h/d", explain_slow_ms=None, sample_analyze=1.0),
        fingerprinter=Fingerprinter(),
        pools=FailingPools(),  # type: ignore[arg-type]
        rng=lambda: 0.0,
    )
    caplog.set_level("DEBUG", logger="dbproxy")
    inspector.start()
    try:
        inspector.consume([_stmt("SELECT * FROM t WHERE id = 'zz-secret-value'")])
        for _ in range(100):
            if inspector.counts.jobs.get(("sample", "failed")):
                break
            await asyncio.sleep(0.01)
    finally:
        await inspector.stop()
    assert inspector.counts.jobs[("sample", "failed")] == 1
    assert "ValueError" in caplog.text
    assert "zz-secret-value" not in caplog.text
