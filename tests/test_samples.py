"""The sample pipelines in data/pipelines, run as real `python -m flexiroaster` subprocesses.

Each test copies data/ into tmp_path, runs a sample against the copy and checks the tables and
files it wrote against values computed here in plain Python from the sample files (csv, json,
re, Decimal), never by running the pipeline's own SQL again.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import subprocess
import sys
from collections import Counter, defaultdict
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import duckdb
import pytest

REPO_DATA = Path(__file__).resolve().parent.parent / "data"
CENT = Decimal("0.01")


# --- helpers ---------------------------------------------------------------------------------


@pytest.fixture
def data(tmp_path) -> Path:
    """A private copy of the repo's data/ folder, without anything a local run left behind."""
    dst = tmp_path / "data"
    shutil.copytree(
        REPO_DATA,
        dst,
        ignore=shutil.ignore_patterns("*.duckdb", "*.duckdb.wal", "out", "work", "__pycache__"),
    )
    return dst


def flexi(data: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "FLEXIROASTER_DATA_DIR": str(data)}
    env.pop("FLEXIROASTER_STORE_PATH", None)  # the store must be the one inside the copy
    return subprocess.run(
        [sys.executable, "-m", "flexiroaster", *args],
        cwd=data.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def run(data: Path, pipeline: str, *params: str, expect: int = 0) -> str:
    """Run data/pipelines/<pipeline>.yaml; assert the exit code; return the run id."""
    args = [f"--param={p}" for p in params]
    proc = flexi(data, "run", f"data/pipelines/{pipeline}.yaml", *args)
    assert proc.returncode == expect, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    return re.findall(r"^run (\w+) ", proc.stdout, re.M)[-1]


def query(data: Path, sql: str, params: list | None = None) -> list[tuple]:
    """Read the store once the run's process is gone (DuckDB lets one process open it)."""
    con = duckdb.connect(str(data / "flexiroaster.duckdb"), read_only=True)
    try:
        return con.execute(sql, params).fetchall()
    finally:
        con.close()


# The store file is flexiroaster.duckdb, so catalog and metadata schema share the name.
META = '"flexiroaster".flexiroaster'


def stages_of(data: Path, run_id: str) -> dict[str, dict]:
    rows = query(
        data,
        f"SELECT stage_id, status, attempts, rows_out, error_type, error, metrics, duration"
        f" FROM {META}.stage_executions WHERE execution_id = ?",
        [run_id],
    )
    keys = ("status", "attempts", "rows_out", "error_type", "error", "metrics", "duration")
    return {
        r[0]: dict(zip(keys, r[1:6] + (json.loads(r[6]) if r[6] else {}, r[7]), strict=True))
        for r in rows
    }


def run_status(data: Path, run_id: str) -> str:
    return query(data, f"SELECT status FROM {META}.executions WHERE id = ?", [run_id])[0][0]


def money(value: Decimal) -> Decimal:
    """Round half away from zero to cents, as DuckDB rounds DECIMAL values."""
    return value.quantize(CENT, rounding=ROUND_HALF_UP)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


# --- Customer Data Validation (original format) ----------------------------------------------

# Worked out by reading data/samples/customers.csv row by row: (customer_id, email) -> the
# checks the row fails. 1021's "12345" passes the `phone` preset (its regex does not count
# digits), so only the pipeline's digit-count rule catches it.
QUARANTINED_CUSTOMERS = {
    (1004, "john.smith@example"): {"email(email)"},
    (1009, "diego.fernandez@example.es"): {"phone(phone)", "phone_has_7_to_15_digits"},
    (None, "grace.hopper@example.com"): {"not_null(customer_id)"},
    (1015, "maria.garcia@@example.com"): {
        "email(email)",
        "phone(phone)",
        "phone_has_7_to_15_digits",
    },
    (1016, "ethan.brown@example.com"): {"accepted_values(plan)"},
    (1012, "emma.j@example.se"): {"unique(customer_id)"},
    (1021, "zoe.clarke@example.ca"): {"phone_has_7_to_15_digits"},
    (1024, None): {"not_null(email)"},
}


def test_customer_data_validation_quarantines_exactly_the_bad_rows(data):
    run_id = run(data, "customer_data_validation")
    assert run_status(data, run_id) == "completed"

    quarantined = query(
        data,
        "SELECT customer_id, email, _failed_checks, _run_id, _stage_id"
        " FROM customer_data_validation_quarantine",
    )
    assert {(r[0], r[1]): set(r[2]) for r in quarantined} == QUARANTINED_CUSTOMERS
    assert len(quarantined) == len(QUARANTINED_CUSTOMERS)
    assert {(r[3], r[4]) for r in quarantined} == {(run_id, "validate_customers")}

    # Every other row of the export, renamed and typed.
    source = read_csv(data / "samples/customers.csv")
    expected = sorted(
        (
            int(r["customer_id"]),
            r["first_name"],
            r["last_name"],
            r["email"],
            r["phone"] or None,
            r["country"],
            date.fromisoformat(r["signup_date"]),
            r["plan"],
        )
        for r in source
        if (int(r["customer_id"]) if r["customer_id"] else None, r["email"] or None)
        not in QUARANTINED_CUSTOMERS
    )
    assert len(source) == 30 and len(expected) == 22
    got = query(
        data,
        "SELECT customer_id, given_name, family_name, email_address, phone_number,"
        " country_code, customer_since, subscription_plan FROM customers_validated ORDER BY 1",
    )
    assert got == expected
    # What the checks promise, checked here without their regexes.
    for _, _, _, email, phone, *_ in got:
        local, _, domain = email.partition("@")
        assert local and "." in domain and "@" not in domain and " " not in email
        assert phone is None or 7 <= sum(ch.isdigit() for ch in phone) <= 15

    stages = stages_of(data, run_id)
    assert stages["validate_customers"]["rows_out"] == 22
    assert stages["validate_customers"]["metrics"]["rows_quarantined"] == 8
    schema_check = next(
        c for c in stages["validate_customers"]["metrics"]["checks"] if c["check"] == "schema"
    )
    assert schema_check["passed"]


# --- ETL Data Pipeline ---------------------------------------------------------------------


def expected_orders(*files: str, data: Path) -> dict[str, tuple]:
    """Clean, dedupe and price the order batches in plain Python, later batches winning."""
    products = {p["sku"]: p for p in read_csv(data / "samples/products.csv")}
    table: dict[str, tuple] = {}
    for name in files:
        newest: dict[str, dict] = {}
        for r in read_csv(data / name):
            r = {k: v.strip() for k, v in r.items()}
            r["updated_at"] = datetime.fromisoformat(r["updated_at"])
            if (
                r["order_id"] not in newest
                or r["updated_at"] >= newest[r["order_id"]]["updated_at"]
            ):
                newest[r["order_id"]] = r
        for oid, r in newest.items():
            qty, price = int(r["quantity"]), Decimal(r["unit_price"])
            discount = Decimal(r["discount"] or "0")
            product = products.get(r["sku"])
            net = qty * price * (1 - discount)
            table[oid] = (
                oid,
                date.fromisoformat(r["order_date"]),
                r["customer_email"].lower(),
                r["sku"],
                product["product_name"] if product else "unknown product",
                product["category"] if product else "uncategorised",
                qty,
                price,
                discount,
                money(qty * price),
                money(net),
                money(net - qty * Decimal(product["unit_cost"])) if product else None,
                r["status"].lower(),
                r["region"].upper() or "UNKNOWN",
                r["updated_at"],
            )
    return table


def warehouse_orders(data: Path) -> list[tuple]:
    return query(
        data,
        "SELECT order_id, order_date, customer_email, sku, product_name, category, quantity,"
        " unit_price, discount, gross_amount, net_amount, margin, status, region, updated_at"
        " FROM warehouse.orders ORDER BY order_id",
    )


def test_etl_loads_cleaned_deduped_priced_orders(data):
    run_id = run(data, "etl_data_pipeline")
    expected = expected_orders("samples/orders.csv", data=data)
    assert len(expected) == 40  # 45 exported rows: 4 re-exports after a status change, 1 copy
    assert warehouse_orders(data) == sorted(expected.values())

    got = {r[0]: r for r in warehouse_orders(data)}
    # Spot checks worked out by hand from orders.csv and products.csv.
    # Re-exported after a status change: "  DELIVERED " then "RETURNED"; "pending" then "shipped".
    assert got["ORD-10007"][12] == "returned"
    assert got["ORD-10012"][12] == "shipped"
    assert got["ORD-10021"][12] == "delivered"
    assert got["ORD-10017"][4:6] == ("unknown product", "uncategorised")
    assert got["ORD-10017"][11] is None  # no unit cost, no margin
    assert got["ORD-10002"][9:12] == (Decimal("24.90"), Decimal("21.17"), Decimal("8.07"))
    assert got["ORD-10006"][13] == "UNKNOWN" and got["ORD-10006"][8] == Decimal("0.15")

    stages = stages_of(data, run_id)
    assert stages["extract_orders"]["rows_out"] == 45
    assert stages["clean_orders"]["rows_out"] == 40
    assert stages["load_warehouse"]["metrics"]["inserted"] == 40


def test_etl_rerun_leaves_the_same_table_and_a_late_batch_upserts(data):
    first = run(data, "etl_data_pipeline")
    before = warehouse_orders(data)
    second = run(data, "etl_data_pipeline")
    assert warehouse_orders(data) == before
    merge = stages_of(data, second)["load_warehouse"]["metrics"]
    assert (merge["mode"], merge["updated"], merge["inserted"]) == ("merge", 40, 0)
    assert first != second

    late = run(data, "etl_data_pipeline", "orders_file=samples/orders_late_updates.csv")
    expected = expected_orders("samples/orders.csv", "samples/orders_late_updates.csv", data=data)
    assert warehouse_orders(data) == sorted(expected.values())
    assert len(expected) == 42
    got = {r[0]: r for r in warehouse_orders(data)}
    assert [got[o][12] for o in ("ORD-10005", "ORD-10018", "ORD-10033")] == [
        "returned",
        "returned",
        "delivered",
    ]
    assert got["ORD-10042"][6] == 3 and got["ORD-10042"][12:14] == ("pending", "UNKNOWN")
    merge = stages_of(data, late)["load_warehouse"]["metrics"]
    assert (merge["updated"], merge["inserted"]) == (3, 2)


# --- ML Model Training ---------------------------------------------------------------------


def test_ml_training_writes_sane_metrics_and_the_test_split_predictions(data):
    from sklearn.datasets import load_wine

    run_id = run(data, "ml_model_training")
    wine = load_wine()
    n = len(wine.target)
    test_rows = math.ceil(n * 0.25)  # train_test_split rounds the test share up

    predictions = query(
        data, "SELECT sample_id, actual, predicted, confidence FROM ml.wine_predictions"
    )
    assert len(predictions) == test_rows == 45
    ids = [p[0] for p in predictions]
    assert len(set(ids)) == len(ids) and all(0 <= i < n for i in ids)
    # The labels travelled through the pipeline untouched.
    assert all(actual == wine.target_names[wine.target[i]] for i, actual, _, _ in predictions)
    # Stratified: each cultivar's share of the test split matches the data set's.
    assert Counter(p[1] for p in predictions) == {"class_0": 15, "class_1": 18, "class_2": 12}
    assert all(1 / 3 <= p[3] <= 1 for p in predictions)

    metrics = dict(
        query(data, "SELECT metric, value FROM ml.wine_model_metrics WHERE run_id = ?", [run_id])
    )
    correct = sum(p[1] == p[2] for p in predictions)
    assert metrics["accuracy"] == pytest.approx(correct / test_rows, abs=1e-6)
    assert 0.9 <= metrics["accuracy"] <= 1.0
    for name in ("precision_macro", "recall_macro", "f1_macro"):
        assert 0.85 <= metrics[name] <= 1.0, name
    for label in ("class_0", "class_1", "class_2"):
        mine = [p for p in predictions if p[1] == label]
        assert metrics[f"support_{label}"] == len(mine)
        assert metrics[f"recall_{label}"] == pytest.approx(
            sum(p[2] == label for p in mine) / len(mine), abs=1e-6
        )
    assert (metrics["test_rows"], metrics["train_rows"], metrics["features_used"]) == (45, 133, 16)
    assert query(data, "SELECT DISTINCT model FROM ml.wine_model_metrics") == [("wine-logreg",)]


# --- Daily Report Generator ----------------------------------------------------------------


def pos_lines(data: Path) -> list[dict]:
    lines = []
    for path in sorted((data / "samples/pos").glob("sales_*.ndjson")):
        lines += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return lines


def expected_report(data: Path, day: str) -> tuple[list[tuple], list[tuple]]:
    """(per store and category rows, per store summary rows) of one day, from the NDJSON."""
    lines = [x for x in pos_lines(data) if x["ts"][:10] == day]
    cells: dict[tuple, dict] = defaultdict(lambda: {"txns": set(), "units": 0, "revenue": 0})
    baskets: dict[tuple, dict] = {}
    for x in lines:
        total = x["qty"] * Decimal(str(x["unit_price"]))
        cell = cells[(x["store"], x["category"])]
        cell["txns"].add(x["txn_id"])
        cell["units"] += x["qty"]
        cell["revenue"] += total
        basket = baskets.setdefault((x["store"], x["txn_id"]), {"sum": 0, "pay": x["payment"]})
        basket["sum"] += total
    detail = [
        (day, store, cat, len(c["txns"]), c["units"], money(c["revenue"]))
        for (store, cat), c in sorted(cells.items())
    ]
    summary = []
    for store in sorted({s for s, _ in baskets}):
        sums = [b["sum"] for (s, _), b in baskets.items() if s == store]
        pays = Counter(b["pay"] for (s, _), b in baskets.items() if s == store)
        mean = sum(sums) / len(sums)
        # avg() runs in DOUBLE in DuckDB: equal to exact half-up rounding unless the exact mean
        # sits on a half cent, which the sample data avoids (checked here, not assumed).
        assert (mean * 200) % 1 != 0 or (mean * 100) % 1 == 0
        summary.append(
            (store, len(sums), money(sum(sums)), money(mean), money(max(sums)))
            + (pays["card"], pays["cash"], pays["mobile"])
        )
    return detail, summary


def test_daily_report_writes_exact_csv_html_and_history(data):
    run(data, "daily_report_generator")
    detail, summary = expected_report(data, "2026-11-27")
    assert len(detail) == 12 and [s[0] for s in summary] == ["Leeds", "Manchester", "York"]
    # 40 sales that day; the York sale synced into this day's file belongs to the 26th.
    assert sum(s[1] for s in summary) == 40

    report = read_csv(data / "out/daily_report_2026-11-27.csv")
    assert list(report[0]) == [
        "report_date",
        "store",
        "category",
        "transactions",
        "units",
        "revenue",
    ]
    assert [
        (
            r["report_date"],
            r["store"],
            r["category"],
            int(r["transactions"]),
            int(r["units"]),
            Decimal(r["revenue"]),
        )
        for r in report
    ] == detail
    assert all(re.fullmatch(r"\d+\.\d\d", r["revenue"]) for r in report)

    page = (data / "out/daily_report_2026-11-27.html").read_text(encoding="utf-8")
    assert "<title>Daily sales by store</title>" in page
    header = re.findall(r"<th>(.*?)</th>", page)
    assert header == [
        "store",
        "transactions",
        "revenue",
        "average_basket",
        "largest_basket",
        "card_payments",
        "cash_payments",
        "mobile_payments",
    ]
    cells = [re.findall(r"<td>(.*?)</td>", row) for row in re.findall(r"<tr><td>.*?</tr>", page)]
    assert cells == [[str(v) for v in row] for row in summary]

    # Another day through a parameter: both days are now in the history table.
    run(data, "daily_report_generator", "report_date=2026-11-26")
    detail_26, _ = expected_report(data, "2026-11-26")
    assert (data / "out/daily_report_2026-11-26.csv").exists()
    history = query(
        data,
        "SELECT CAST(report_date AS VARCHAR), store, category, transactions, units, revenue"
        " FROM reports.daily_sales ORDER BY ALL",
    )
    assert history == sorted(detail + detail_26)
    # York's sale of the 26th that synced into the 27th's file counts on the 26th.
    late = [x for x in pos_lines(data) if x["txn_id"] == "YOR-20261126-0041"]
    assert len(late) == 1 and late[0]["ts"].startswith("2026-11-26")
    york_deli_26 = query(
        data,
        "SELECT transactions FROM reports.daily_sales"
        " WHERE report_date = DATE '2026-11-26' AND store = 'York' AND category = 'deli'",
    )[0][0]
    york_deli_txns = {
        x["txn_id"]
        for x in pos_lines(data)
        if x["ts"].startswith("2026-11-26") and (x["store"], x["category"]) == ("York", "deli")
    }
    assert york_deli_26 == len(york_deli_txns) and "YOR-20261126-0041" in york_deli_txns


# --- API Data Sync -------------------------------------------------------------------------


def expected_contacts(data: Path) -> tuple[dict[str, tuple], dict[str, tuple]]:
    newest: dict[str, tuple[dict, int]] = {}
    for path in sorted((data / "samples/api").glob("contacts_page_*.json")):
        page = json.loads(path.read_text(encoding="utf-8"))
        for record in page["data"]:
            seen = newest.get(record["id"])
            if (
                seen is None
                or record["attributes"]["updated_at"] > seen[0]["attributes"]["updated_at"]
            ):
                newest[record["id"]] = (record, page["meta"]["page"])
    contacts, subscriptions = {}, {}
    for cid, (record, page_no) in newest.items():
        a = record["attributes"]
        email = a["email"].strip().lower() or None
        company = a.get("company") or {}
        contacts[cid] = (
            cid,
            f"{a['first_name']} {a['last_name']}",
            a["first_name"],
            a["last_name"],
            email,
            email.split("@")[1] if email else None,
            a.get("phone"),
            company.get("name"),
            company.get("domain"),
            a["address"]["city"],
            a["address"]["country_code"],
            ",".join(sorted(a["tags"])) or None,
            (a.get("lifecycle_stage") or "").strip().lower() or "lead",
            datetime.fromisoformat(a["updated_at"]).astimezone(UTC).replace(tzinfo=None),
            page_no,
        )
        for s in record["subscriptions"]:
            subscriptions[s["id"]] = (
                s["id"],
                cid,
                s["plan"],
                s["status"],
                Decimal(s["mrr"]),
                date.fromisoformat(s["started_on"]),
            )
    return contacts, subscriptions


CONTACT_COLUMNS = (
    "contact_id, full_name, first_name, last_name, email, email_domain, phone, company,"
    " company_domain, city, country_code, tags, lifecycle_stage, updated_at, source_page"
)


def test_api_sync_flattens_dedupes_and_upserts(data):
    first = run(data, "api_data_sync")
    contacts, subscriptions = expected_contacts(data)
    assert len(contacts) == 18 and len(subscriptions) == 13  # 19 records, con_0004 twice
    got = query(data, f"SELECT {CONTACT_COLUMNS} FROM crm.contacts ORDER BY contact_id")
    assert got == sorted(contacts.values())
    assert query(data, "SELECT * FROM crm.subscriptions ORDER BY 1") == sorted(
        subscriptions.values()
    )
    # By hand from page 2: con_0004 changed while paging; its newer copy won.
    c4 = next(r for r in got if r[0] == "con_0004")
    assert (c4[12], c4[13], c4[14]) == ("customer", datetime(2026, 11, 27, 10, 5), 2)
    assert query(
        data, "SELECT plan, status FROM crm.subscriptions WHERE contact_id = 'con_0004'"
    ) == [("scale", "active")]
    assert stages_of(data, first)["flatten_contacts"]["rows_out"] == 19

    # Local drift between syncs: a stale copy, a deleted row, a contact only this side knows.
    con = duckdb.connect(str(data / "flexiroaster.duckdb"))
    try:
        con.execute(
            "UPDATE crm.contacts SET email = 'old@example.com', source_page = 0 WHERE contact_id = 'con_0004'"
        )
        con.execute("DELETE FROM crm.contacts WHERE contact_id = 'con_0010'")
        con.execute(
            "INSERT INTO crm.contacts (contact_id, full_name, lifecycle_stage, updated_at)"
            " VALUES ('con_9001', 'Offline Only', 'lead', TIMESTAMP '2026-11-01 00:00:00')"
        )
    finally:
        con.close()
    second = run(data, "api_data_sync")
    got = query(data, f"SELECT {CONTACT_COLUMNS} FROM crm.contacts ORDER BY contact_id")
    kept = (
        "con_9001",
        "Offline Only",
        None,
        None,
        None,
        None,
        None,
        None,
        None,
        None,
        None,
        None,
        "lead",
        datetime(2026, 11, 1),
        None,
    )
    assert got == sorted([*contacts.values(), kept])
    merge = stages_of(data, second)["upsert_contacts"]["metrics"]
    assert (merge["updated"], merge["inserted"]) == (17, 1)


# --- Log Analyzer --------------------------------------------------------------------------

# Written independently of the pipeline's SQL: Python's re, datetime and a lookahead.
COMBINED = re.compile(
    r'(?P<ip>\S+) \S+ \S+ \[(?P<ts>[^\]]+)\] "(?P<method>[A-Z]+) (?P<path>[^ "]+) HTTP/[\d.]+"'
    r' (?P<status>\d{3}) (?P<bytes>\d+|-) "[^"]*" "[^"]*" (?P<seconds>[\d.]+)'
)


def test_log_analyzer_aggregates_every_request_and_quarantines_junk(data):
    run_id = run(data, "log_analyzer")
    lines = (data / "samples/logs/access.log").read_text(encoding="utf-8").splitlines()
    events, junk = [], []
    for line in lines:
        m = COMBINED.fullmatch(line)
        if m is None:
            junk.append(line)
            continue
        at = datetime.strptime(m["ts"], "%d/%b/%Y:%H:%M:%S %z").astimezone(UTC)
        events.append(
            {
                "hour": at.replace(minute=0, second=0, tzinfo=None),
                "method": m["method"],
                "endpoint": re.sub(r"/\d+(?=/|$)", "/{id}", m["path"].split("?")[0]),
                "status": int(m["status"]),
                "bytes": 0 if m["bytes"] == "-" else int(m["bytes"]),
                "ms": round(Decimal(m["seconds"]) * 1000),
            }
        )
    assert len(junk) == 3 and len(events) == len(lines) - 3 == 441

    unparsed = query(data, "SELECT raw_line, _failed_checks, _run_id FROM web_logs.unparsed_lines")
    assert sorted(r[0] for r in unparsed) == sorted(junk)
    assert {tuple(r[1]) for r in unparsed} == {("parsed_as_request",)} and {
        r[2] for r in unparsed
    } == {run_id}
    assert any("\\x16\\x03\\x01" in j for j in junk) and any("etc/passwd" in j for j in junk)

    groups: dict[tuple, list[dict]] = defaultdict(list)
    for e in events:
        groups[(e["hour"], e["method"], e["endpoint"])].append(e)
    expected = []
    for key, es in sorted(groups.items()):
        statuses = [e["status"] // 100 for e in es]
        expected.append(
            key
            + (len(es), statuses.count(2), statuses.count(3), statuses.count(4), statuses.count(5))
            + (sum(e["bytes"] for e in es), sum(e["ms"] for e in es), max(e["ms"] for e in es))
            + (sum(e["ms"] >= 1000 for e in es),)
        )
    got = query(
        data,
        "SELECT hour, method, endpoint, requests, status_2xx, status_3xx, status_4xx, status_5xx,"
        " bytes_sent, total_response_ms, max_response_ms, slow_requests"
        " FROM web_logs.hourly_endpoint_stats ORDER BY hour, method, endpoint",
    )
    assert got == expected
    assert {g[0] for g in got} == {datetime(2026, 11, 27, h) for h in (8, 9, 10, 11)}
    assert "/api/orders/{id}" in {g[2] for g in got}

    by_status = Counter(e["status"] for e in events)
    endpoints = defaultdict(set)
    for e in events:
        endpoints[e["status"]].add(e["endpoint"])
    assert query(
        data, "SELECT status, requests, endpoints FROM web_logs.status_counts ORDER BY 1"
    ) == [(s, by_status[s], len(endpoints[s])) for s in sorted(by_status)]


# --- Inventory Reconciliation (fails on purpose) -------------------------------------------


def test_inventory_reconciliation_fails_after_retries_with_quarantine(data):
    run_id = run(data, "inventory_reconciliation", expect=1)
    assert run_status(data, run_id) == "failed"

    counts = read_csv(data / "samples/inventory/stock_count_2026-11-27.csv")
    bad = [
        r
        for r in counts
        if not r["sku"] or r["location"] not in ("A", "B", "C") or int(r["counted_qty"]) < 0
    ]
    quarantined = query(
        data,
        "SELECT sku, location, counted_qty, _failed_checks FROM inventory.count_quarantine",
    )
    assert sorted((r[0] or "", r[1], r[2]) for r in quarantined) == sorted(
        (r["sku"], r["location"], int(r["counted_qty"])) for r in bad
    )
    assert {(r[0], r[1]): r[3] for r in quarantined} == {
        (None, "B"): ["not_null(sku, location, counted_qty)"],
        ("SKU-105", "Z"): ["accepted_values(location)"],
        ("SKU-104", "B"): ["range(counted_qty)"],
    }

    # The books, by hand: ledger balance per bin against the counts that survived the checks.
    booked: Counter = Counter()
    for r in read_csv(data / "samples/inventory/stock_ledger.csv"):
        booked[(r["sku"], r["location"])] += int(r["qty"])
    counted: Counter = Counter()
    for r in counts:
        if r not in bad:
            counted[(r["sku"], r["location"])] += int(r["counted_qty"])
    off = {
        k: counted[k] - booked[k]
        for k in booked.keys() | counted.keys()
        if counted[k] != booked[k] or k not in counted
    }
    assert off == {
        ("SKU-102", "A"): -3,
        ("SKU-104", "B"): -booked[("SKU-104", "B")],
        ("SKU-107", "C"): 1,
    }

    stages = stages_of(data, run_id)
    for sid in ("stock_count", "stock_ledger", "check_count", "compare"):
        assert (stages[sid]["status"], stages[sid]["attempts"]) == ("completed", 1), sid
    assert stages["check_count"]["metrics"]["rows_quarantined"] == 3
    reconcile = stages["reconcile"]
    assert (reconcile["status"], reconcile["attempts"], reconcile["error_type"]) == (
        "failed",
        3,
        "StageError",
    )
    assert f"count_matches_ledger failed for {len(off)} row(s)" in reconcile["error"]
    assert "'sku': 'SKU-102', 'location': 'A', 'difference': -3" in reconcile["error"]
    assert reconcile["duration"] >= 0.6  # waited 0.2 s, then 0.4 s, between attempts
    assert stages["publish_positions"]["status"] == "skipped"
    assert "upstream `reconcile` failed" in stages["publish_positions"]["error"]
    assert query(
        data, "SELECT count(*) FROM information_schema.tables WHERE table_name = 'stock_positions'"
    ) == [(0,)]

    logs = [
        m
        for (m,) in query(
            data,
            f"SELECT message FROM {META}.logs WHERE execution_id = ? AND stage_id = 'reconcile' ORDER BY id",
            [run_id],
        )
    ]
    assert any(m.startswith("attempt 1 failed") and m.endswith("retrying in 0.2 s") for m in logs)
    assert any(m.startswith("attempt 2 failed") and m.endswith("retrying in 0.4 s") for m in logs)
    assert "stage reconcile (validation) started (attempt 3)" in logs


# --- all samples, and the sample files themselves -------------------------------------------


def test_demo_runs_every_sample_as_intended(data):
    proc = flexi(data, "demo")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    files = sorted(p.name for p in (data / "pipelines").glob("*.yaml"))
    assert len(files) == 7
    for name in files:
        status = "failed" if name == "inventory_reconciliation.yaml" else "completed"
        assert re.search(rf"^{re.escape(name)}\s+{status}\s+as intended$", proc.stdout, re.M), name
    assert "UNEXPECTED" not in proc.stdout
    assert query(data, f"SELECT status, count(*) FROM {META}.executions GROUP BY 1 ORDER BY 1") == [
        ("completed", 6),
        ("failed", 1),
    ]


def test_sample_files_are_small_and_regenerate_byte_for_byte(tmp_path):
    samples = REPO_DATA / "samples"
    subprocess.run(
        [sys.executable, str(samples / "make_samples.py"), str(tmp_path)],
        check=True,
        capture_output=True,
    )
    made = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert len(made) == 12
    for rel in made:
        committed = samples / rel
        assert committed.read_bytes() == (tmp_path / rel).read_bytes(), rel
        assert committed.stat().st_size < 200_000, rel
