"""PostgreSQL connections end to end on a real PostgreSQL 15: read a query, transform, write
append / replace / merge in one transaction; failures leave the target as it was; secrets masked;
a long query stops on cancel and on timeout."""

from __future__ import annotations

import time

import pytest

from flexiroaster.states import RunStatus

from .conftest import pipeline, rows
from .pg import pg  # noqa: F401  (the session's PostgreSQL server)


def _connect(engine, pg, name="wh", password=None):  # noqa: F811
    cfg = {"host": pg.host, "port": pg.port, "database": pg.dbname, "user": pg.user}
    engine.connections.put(name, "postgres", cfg, {"password": password or pg.password})


def _texts(store, run_id: str) -> str:
    """Everything a run recorded that a person can read: logs, errors, tracebacks, metrics."""
    rec = store.get_execution(run_id)
    logs = [entry.message for entry in store.get_logs(run_id)]
    stages = [(s.error, s.traceback, s.metrics) for s in store.get_stages(run_id)]
    return repr((rec.error, logs, stages, rec.params))


SYNC = """
name: orders-sync
variables: {min_amount: -100}
stages:
  - id: orders
    type: input
    config:
      connection: wh
      query: "select id, customer, amount, placed from shop.orders where amount >= {{ min_amount }} order by id"
  - id: shaped
    type: sql
    dependencies: [orders]
    config: {query: "select id, upper(customer) as customer, amount * 2 as doubled, placed from orders"}
  - id: keep_local
    type: output
    dependencies: [shaped]
    config: {table: shaped_copy, mode: replace}
  - id: to_pg
    type: output
    dependencies: [shaped]
    config: {connection: wh, table: report.orders_doubled, mode: merge, keys: [id]}
"""


def test_read_transform_merge_updates_and_inserts(engine, store, pg):  # noqa: F811
    pg.sql("create schema shop")
    pg.sql("create schema report")
    pg.sql("create table shop.orders (id int primary key, customer text, amount numeric(10,2), placed date)")
    pg.sql("insert into shop.orders values (1,'ann',10.50,'2026-11-01'), (2,'bob',20.25,'2026-11-02'),"
           " (3,'cy',-1.00,'2026-11-03')")  # fmt: skip
    _connect(engine, pg)
    p = pipeline(SYNC)
    first = engine.run(p)
    assert first.status == RunStatus.COMPLETED, first.error
    got = pg.sql("select id, customer, doubled::text, placed::text from report.orders_doubled order by id")
    assert got == [(1, "ANN", "21.00", "2026-11-01"), (2, "BOB", "40.50", "2026-11-02"),
                   (3, "CY", "-2.00", "2026-11-03")]  # fmt: skip
    # numeric(10,2) arrives as DECIMAL, not text or a float.
    assert rows(store, "select typeof(doubled), typeof(placed) from shaped_copy limit 1") == [
        ("DECIMAL(18,2)", "DATE")
    ]
    # ... and the table the merge created keeps that precision and scale
    assert pg.sql(
        "select data_type, numeric_precision, numeric_scale from information_schema.columns"
        " where table_name = 'orders_doubled' and column_name = 'doubled'"
    ) == [("numeric", 18, 2)]
    stages = {s.stage_id: s for s in store.get_stages(first.id)}
    assert stages["orders"].rows_out == 3
    assert stages["to_pg"].metrics == {"connection": "wh", "table": "report.orders_doubled",
                                       "mode": "merge", "rows": 3, "updated": 0, "inserted": 3}  # fmt: skip
    assert any(
        e.message == "read 3 rows from wh" for e in store.get_logs(first.id)
    ), "the read is logged by connection name"

    pg.sql("update shop.orders set customer = 'anne', amount = 11 where id = 1")
    pg.sql("insert into shop.orders values (4, 'dee', 5, '2026-11-04')")
    second = engine.run(pipeline(SYNC), {"min_amount": 1})  # a bound parameter, not pasted SQL
    assert second.status == RunStatus.COMPLETED, second.error
    got = pg.sql("select id, customer, doubled::text, placed::text from report.orders_doubled order by id")
    assert got == [(1, "ANNE", "22.00", "2026-11-01"), (2, "BOB", "40.50", "2026-11-02"),
                   (3, "CY", "-2.00", "2026-11-03"), (4, "DEE", "10.00", "2026-11-04")]  # fmt: skip
    merged = {s.stage_id: s for s in store.get_stages(second.id)}["to_pg"].metrics
    assert (merged["updated"], merged["inserted"], merged["rows"]) == (2, 1, 3)


def _writer(mode: str, data: str, table: str = "public.scores", keys: str = "") -> str:
    return f"""
name: write-{mode}
stages:
  - id: src
    type: input
    config: {{data: {data}}}
  - id: out
    type: output
    dependencies: [src]
    config: {{connection: wh, table: {table}, mode: {mode}{keys}}}
"""


def test_append_and_replace(engine, pg):  # noqa: F811
    _connect(engine, pg)
    two = '[{"name": "a", "score": 1}, {"name": "b", "score": 2}]'
    for _ in range(2):
        assert engine.run(pipeline(_writer("append", two))).status == RunStatus.COMPLETED
    assert pg.sql("select name, score from scores order by name, score") == [
        ("a", 1), ("a", 1), ("b", 2), ("b", 2)
    ]
    # replace keeps the table (its constraints too) and swaps the rows in one transaction
    pg.sql("alter table scores add constraint positive check (score > 0)")
    one = '[{"name": "c", "score": 3}]'
    assert engine.run(pipeline(_writer("replace", one))).status == RunStatus.COMPLETED
    assert pg.sql("select name, score from scores") == [("c", 3)]
    assert pg.sql("select count(*) from pg_constraint where conname = 'positive'") == [(1,)]
    # merge needs unique keys in the input: refused before anything is written
    dup = '[{"name": "c", "score": 4}, {"name": "c", "score": 5}]'
    rec = engine.run(pipeline(_writer("merge", dup, keys=", keys: [name]")))
    assert rec.status == RunStatus.FAILED and "not unique in the input" in rec.error
    assert pg.sql("select name, score from scores") == [("c", 3)]
    pg.sql("drop table scores")


def test_a_failure_mid_write_leaves_the_target_exactly_as_before(engine, store, pg):  # noqa: F811
    _connect(engine, pg)
    pg.sql("create table ledger (id bigint primary key, amount bigint not null check (amount >= 0), note text)")
    pg.sql("insert into ledger select g, g * 10, 'old ' || g from generate_series(1, 50) g")
    before = pg.sql("select * from ledger order by id")
    # 2000 rows, one in the middle breaking the CHECK constraint
    bad = """
name: bad-batch
stages:
  - id: src
    type: sql
    config: {query: "select range + 25 as id, case when range = 1000 then -1 else range end as amount, 'new' as note from range(2000)"}
  - id: out
    type: output
    dependencies: [src]
    config: {connection: wh, table: ledger, mode: MODE, keys: [id]}
"""
    for mode in ("append", "replace", "merge"):
        rec = engine.run(pipeline(bad.replace("MODE", mode)))
        assert rec.status == RunStatus.FAILED
        wanted = "duplicate key" if mode == "append" else "violates check constraint"
        assert "postgres connection wh" in rec.error and wanted in rec.error, rec.error
        assert "nothing written" in rec.error
        assert pg.sql("select * from ledger order by id") == before, mode
    # a value of the wrong type for the target's column
    wrong = _writer("append", '[{"id": 900, "amount": "lots", "note": "x"}]', table="ledger")
    rec = engine.run(pipeline(wrong))
    assert rec.status == RunStatus.FAILED and "amount" in rec.error and "bigint" in rec.error, rec.error
    assert pg.sql("select * from ledger order by id") == before
    assert pg.sql("select count(*) from pg_tables where tablename like 'flexiroaster_staging%'") == [(0,)]
    pg.sql("drop table ledger")


def test_a_wrong_password_is_a_clear_error_with_the_password_masked(engine, store, pg):  # noqa: F811
    wrong = "Wr0ng-Pa55/word%x"
    _connect(engine, pg, "bad", password=wrong)
    rec = engine.run(pipeline("""
        name: bad-login
        stages:
          - {id: src, type: input, config: {connection: bad, query: "select 1 as x"}}
    """))
    assert rec.status == RunStatus.FAILED
    assert "postgres connection bad (flexi@127.0.0.1:" in rec.error
    assert "password authentication failed for user" in rec.error
    texts = _texts(store, rec.id)
    assert wrong not in texts and "Wr0ng-Pa55%2Fword%25x" not in texts
    # A server error that quotes the secret (a table named after it) comes back masked.
    _connect(engine, pg)
    echo = engine.run(pipeline(f"""
        name: echo
        stages:
          - {{id: src, type: input, config: {{connection: wh, query: 'select * from "{pg.password}"'}}}}
    """))
    assert echo.status == RunStatus.FAILED
    assert 'relation "***" does not exist' in echo.error, echo.error
    assert pg.password not in echo.error and pg.password not in str(store.get_stages(echo.id)[0].error)
    assert not [e for e in store.get_logs(echo.id) if pg.password in e.message]


def _wait_running(store, run_id: str, stage_id: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(s.stage_id == stage_id and s.status == "running" for s in store.get_stages(run_id)):
            return
        time.sleep(0.05)
    raise AssertionError(f"stage {stage_id} of {run_id} never ran")


def _sleeping(pg) -> int:  # noqa: F811
    return pg.sql(
        "select count(*) from pg_stat_activity where query like '%pg_sleep(30) as slept%'"
        " and state = 'active' and pid <> pg_backend_pid()"
    )[0][0]


def test_cancel_and_timeout_stop_a_long_query(engine, store, pg):  # noqa: F811
    _connect(engine, pg)
    slow = """
name: slow-{n}
stages:
  - {{id: wait, type: input, {timeout}config: {{connection: wh, query: "select pg_sleep(30) as slept"}}}}
"""
    rec = engine.submit(pipeline(slow.format(n=1, timeout="")))
    _wait_running(store, rec.id, "wait")
    time.sleep(0.5)  # the query is on the server
    assert _sleeping(pg) == 1
    started = time.monotonic()
    engine.cancel(rec.id)
    assert engine.wait(rec.id, timeout=10)
    assert time.monotonic() - started < 4
    assert store.get_execution(rec.id).status == RunStatus.CANCELLED
    assert _sleeping(pg) == 0  # the server stopped it, not just the engine waiting
    started = time.monotonic()
    timed = engine.run(pipeline(slow.format(n=2, timeout="timeout: 1, ")))
    assert time.monotonic() - started < 6
    assert timed.status == RunStatus.FAILED and "timed out after 1 s" in timed.error
    assert _sleeping(pg) == 0


def test_airflow_stages_mode_runs_connection_stages_in_the_runtime(engine, store, settings, pg, tmp_path):  # noqa: F811
    """A stage with a connection needs the runtime (it alone can decrypt the secrets): the
    stage runner opens the connection, writes its output for the next task, masks its logs."""
    from datetime import UTC, datetime

    import pyarrow.parquet as pq

    from flexiroaster.errors import StageError
    from flexiroaster.stage_runner import needs_store, run_one_stage

    _connect(engine, pg)
    pg.sql("create table if not exists colours (id int, name text)")
    pg.sql("insert into colours values (1, 'red'), (2, 'blue')")
    p = pipeline(f"""
        name: stages-mode
        stages:
          - {{id: load, type: input, config: {{connection: wh, query: "select * from colours order by id"}}}}
          - {{id: echo, type: input, config: {{connection: wh, query: 'select * from "{pg.password}"'}}}}
          - {{id: local, type: sql, config: {{query: "select 1 as x"}}}}
    """)
    assert needs_store(p.stages[0]) and not needs_store(p.stages[2])
    kw = dict(run_id="r1", params={}, stands_for=datetime.now(UTC), warehouse=tmp_path)
    done = run_one_stage(store, settings, p, "load", **kw)
    assert done.rows_out == 2 and ("INFO", "read 2 rows from wh") in done.logs
    assert pq.read_table(done.output).to_pylist() == [{"id": 1, "name": "red"}, {"id": 2, "name": "blue"}]
    with pytest.raises(StageError) as err:
        run_one_stage(store, settings, p, "echo", **kw)
    assert 'relation "***" does not exist' in str(err.value) and pg.password not in str(err.value)
    pg.sql("drop table colours")
