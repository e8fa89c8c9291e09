"""Write the sample data the pipelines in data/pipelines read: deterministic, seeded, small.

Run `python data/samples/make_samples.py [OUT_DIR]` (default: this folder). The same code always
writes the same bytes, so the committed files can be checked against a fresh run.
"""

from __future__ import annotations

import csv
import io
import json
import random
import sys
import unicodedata
from datetime import datetime, timedelta
from pathlib import Path

SEED = 20261127


def _csv(rows: list[list]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()


# --- customers.csv: a CRM export with the mistakes real exports have ----------------------------

CUSTOMERS = [
    ["customer_id", "first_name", "last_name", "email", "phone", "country", "signup_date", "plan"],
    [1001, "Olivia", "Bennett", "olivia.bennett@example.com", "+1 (415) 555-0134", "US", "2024-01-15", "pro"],
    [1002, "Liam", "Okafor", "liam.okafor@example.co.uk", "+44 20 7946 0321", "GB", "2024-02-03", "free"],
    [1003, "Sofia", "Rossi", "sofia.rossi@example.it", "+39 06 6982 1111", "IT", "2024-02-19", "business"],
    [1004, "John", "Smith", "john.smith@example", "+1 212 555 0187", "US", "2024-03-02", "free"],
    [1005, "Mei", "Tanaka", "mei.tanaka@example.jp", "+81 3-1234-5678", "JP", "2024-03-11", "pro"],
    [1006, "Lukas", "Weber", "lukas.weber@example.de", "+49 30 901820", "DE", "2024-03-28", "business"],
    [1007, "Amara", "Nwosu", "amara.nwosu@example.ng", "+234 803 555 0199", "NG", "2024-04-06", "free"],
    [1008, "Chloé", "Martin", "chloe.martin@example.fr", "+33 1 42 68 53 00", "FR", "2024-04-22", "pro"],
    [1009, "Diego", "Fernández", "diego.fernandez@example.es", "555-CALL-NOW", "ES", "2024-05-09", "free"],
    [1010, "Priya", "Sharma", "priya.sharma@example.in", "+91 22 5555 0142", "IN", "2024-05-30", "business"],
    [1011, "Noah", "Williams", "noah.williams@example.com", "(555) 010-0177", "US", "2024-06-14", "free"],
    [1012, "Emma", "Johansson", "emma.johansson@example.se", "+46 8 555 010 42", "SE", "2024-06-30", "pro"],
    [1013, "Mateo", "Silva", "mateo.silva@example.com.br", "+55 11 5555-0123", "BR", "2024-07-08", "free"],
    ["", "Grace", "Hopper", "grace.hopper@example.com", "+1 (202) 555-0110", "US", "2024-07-21", "pro"],
    [1014, "Aisha", "Khan", "aisha.khan@example.pk", "+92 21 5555 0101", "PK", "2024-08-02", "business"],
    [1015, "Maria", "Garcia", "maria.garcia@@example.com", "call me", "MX", "2024-08-17", "free"],
    [1016, "Ethan", "Brown", "ethan.brown@example.com", "+1 312 555 0148", "US", "2024-09-01", "platinum"],
    [1017, "Hannah", "Müller", "hannah.mueller@example.at", "+43 1 555 0193", "AT", "2024-09-15", "pro"],
    [1018, "Yusuf", "Demir", "yusuf.demir@example.com.tr", "+90 212 555 01 45", "TR", "2024-10-04", "free"],
    # The same customer exported twice (a second CRM account): the later row is the duplicate.
    [1012, "Emma", "Johansson", "emma.j@example.se", "+46 8 555 010 42", "SE", "2024-06-30", "pro"],
    [1019, "Isabella", "Costa", "isabella.costa@example.pt", "+351 21 555 0160", "PT", "2024-10-20", "business"],
    [1020, "Oliver", "Smith", "oliver.smith@example.com.au", "+61 2 5550 1234", "AU", "2024-11-02", "free"],
    [1021, "Zoe", "Clarke", "zoe.clarke@example.ca", "12345", "CA", "2024-11-19", "pro"],
    [1022, "Kenji", "Sato", "kenji.sato@example.jp", "+81 6-5555-0172", "JP", "2024-12-05", "free"],
    [1023, "Fatima", "Haddad", "fatima.haddad@example.ma", "+212 522 555 014", "MA", "2025-01-13", "pro"],
    [1024, "Samuel", "Green", "", "+1 617 555 0109", "US", "2025-01-29", "free"],
    [1025, "Nora", "Lindqvist", "nora.lindqvist@example.fi", "+358 9 555 0187", "FI", "2025-02-14", "business"],
    [1026, "Arjun", "Mehta", "arjun.mehta@example.in", "+91 80 5555 0163", "IN", "2025-03-03", "free"],
    [1027, "Lucy", "Evans", "lucy.evans@example.ie", "+353 1 555 0128", "IE", "2025-03-21", "pro"],
    [1028, "Tomás", "Novak", "tomas.novak@example.cz", "", "CZ", "2025-04-09", "free"],
]  # fmt: skip


# --- orders: a shop's order export (ETL) and the product catalog it joins ---------------------

PRODUCTS = [
    # sku, name, category, list price, unit cost
    ("SKU-101", "Espresso beans 1kg", "coffee", "24.90", "13.10"),
    ("SKU-102", "Filter coffee 500g", "coffee", "11.50", "5.80"),
    ("SKU-103", "Ceramic mug", "homeware", "9.99", "3.20"),
    ("SKU-104", "Pour-over kettle", "equipment", "54.00", "31.75"),
    ("SKU-105", "Burr grinder", "equipment", "129.00", "82.40"),
    ("SKU-106", "Paper filters x100", "accessories", "4.49", "1.15"),
    ("SKU-107", "Oat milk 1l", "grocery", "2.79", "1.60"),
    ("SKU-108", "Gift card", "gift", "25.00", "25.00"),
]
BUYERS = [
    "alice.brown@example.com", "ben.carter@example.com", "chen.wu@example.org",
    "dana.ivanova@example.net", "elif.yilmaz@example.com", "farid.haddad@example.com",
    "gina.moretti@example.it", "hugo.lefevre@example.fr", "ines.pereira@example.pt",
    "jonas.berg@example.se", "kofi.mensah@example.com", "lena.vogel@example.de",
]  # fmt: skip
REGIONS = ["north", "south", "east", "west"]


def _messy(rng: random.Random, text: str) -> str:
    """How people and old systems type things: odd case, stray spaces."""
    pick = rng.random()
    if pick < 0.2:
        return f"  {text.upper()} "
    if pick < 0.35:
        return text.title() + " "
    if pick < 0.45:
        return " " + text
    return text


def orders() -> tuple[str, str, str]:
    rng = random.Random(SEED)
    header = [
        "order_id", "order_date", "customer_email", "sku", "quantity", "unit_price",
        "discount", "status", "region", "updated_at",
    ]  # fmt: skip
    rows = []
    start = datetime(2026, 11, 20, 8, 0)
    for n in range(1, 41):
        placed = start + timedelta(minutes=int(n * 251 + rng.randrange(0, 120)))
        sku, _, _, price, _ = rng.choice(PRODUCTS)
        status = rng.choices(
            ["pending", "shipped", "delivered", "cancelled", "returned"], [3, 4, 6, 1, 1]
        )[0]
        rows.append(
            [
                f"ORD-{10000 + n}",
                placed.date().isoformat(),
                _messy(rng, rng.choice(BUYERS)),
                sku,
                str(rng.choice([1, 1, 1, 2, 2, 3, 4, 6])),
                price,
                rng.choice(["", "", "0.05", "0.10", "0.15"]),
                _messy(rng, status),
                "" if rng.random() < 0.12 else _messy(rng, rng.choice(REGIONS)),
                (placed + timedelta(minutes=rng.randrange(5, 90))).isoformat(sep=" "),
            ]
        )
    # A product the catalog does not know yet: the load keeps it, uncategorised.
    rows[16][3], rows[16][5] = "SKU-999", "15.00"
    # Status changes re-exported later in the same file: the newest row per order wins.
    follows = {"pending": "shipped", "shipped": "delivered", "delivered": "returned"}
    for n, spell, hours in [
        (3, str.lower, 50),
        (7, str.upper, 30),
        (12, str.lower, 70),
        (21, lambda s: s.title() + " ", 26),
    ]:
        row = list(rows[n - 1])
        row[7] = spell(follows[row[7].strip().lower()])
        row[9] = (datetime.fromisoformat(row[9]) + timedelta(hours=hours)).isoformat(sep=" ")
        rows.insert(rng.randrange(n, len(rows)), row)
    # The same row exported twice, byte for byte.
    rows.insert(30, list(rows[9]))
    # A late feed two days on: three status changes and two new orders.
    late = []
    for n, new_status in [(5, "returned"), (18, "returned"), (33, "delivered")]:
        row = list(next(r for r in rows if r[0] == f"ORD-{10000 + n}"))
        row[7], row[9] = new_status, "2026-11-29 07:45:00"
        late.append(row)
    late.append(
        [
            "ORD-10041",
            "2026-11-28",
            "Kofi.Mensah@Example.com ",
            "SKU-105",
            "1",
            "129.00",
            "0.10",
            "pending",
            "east",
            "2026-11-28 16:20:00",
        ]
    )
    late.append(
        [
            "ORD-10042",
            "2026-11-28",
            "lena.vogel@example.de",
            "SKU-106",
            " 3",
            "4.49",
            "",
            " Pending",
            "",
            "2026-11-28 18:02:00",
        ]
    )
    products = [
        ["sku", "product_name", "category", "list_price", "unit_cost"],
        *map(list, PRODUCTS),
    ]
    return _csv([header, *rows]), _csv([header, *late]), _csv(products)


# --- point-of-sale lines, one NDJSON file a day (daily report) ---------------------------------

STORES = ["Leeds", "Manchester", "York"]
POS_ITEMS = [
    ("BRD-01", "bakery", 2.49), ("BRD-02", "bakery", 1.15), ("CRS-01", "bakery", 1.85),
    ("COF-01", "drinks", 2.95), ("COF-02", "drinks", 3.40), ("TEA-01", "drinks", 2.10),
    ("SND-01", "deli", 4.75), ("SND-02", "deli", 5.25), ("SAL-01", "deli", 6.10),
    ("BNS-01", "grocery", 0.95), ("MLK-01", "grocery", 1.39), ("EGG-06", "grocery", 2.29),
]  # fmt: skip


def pos_day(day: str, seed: int, late_sync: bool = False) -> str:
    rng = random.Random(seed)
    lines = []
    if late_sync:
        # A till that was offline synced after midnight: yesterday's last sale is in today's file.
        yesterday = (datetime.fromisoformat(day) - timedelta(days=1)).date()
        lines.append(
            json.dumps(
                {
                    "txn_id": f"YOR-{yesterday.strftime('%Y%m%d')}-0041",
                    "ts": f"{yesterday}T23:47:10",
                    "store": "York",
                    "sku": "SND-02",
                    "category": "deli",
                    "qty": 2,
                    "unit_price": 5.25,
                    "payment": "card",
                }
            )
        )
    opening = datetime.fromisoformat(f"{day}T07:30:00")
    for n in range(1, 41):
        ts = opening + timedelta(seconds=n * 1200 + rng.randrange(0, 900))
        store = rng.choice(STORES)
        payment = rng.choices(["card", "cash", "mobile"], [6, 2, 3])[0]
        for sku, category, price in rng.sample(POS_ITEMS, rng.randint(1, 4)):
            lines.append(
                json.dumps(
                    {
                        "txn_id": f"{store[:3].upper()}-{day.replace('-', '')}-{n:04d}",
                        "ts": ts.isoformat(),
                        "store": store,
                        "sku": sku,
                        "category": category,
                        "qty": rng.choices([1, 2, 3, 6], [10, 4, 1, 1])[0],
                        "unit_price": price,
                        "payment": payment,
                    }
                )
            )
    return "\n".join(lines) + "\n"


# --- a CRM API's JSON pages (API sync) ---------------------------------------------------------

PEOPLE = [
    ("Ada", "Lovelace", "Analytical Engines Ltd", "analytical.example.com", "London", "GB"),
    ("Alan", "Turing", "Bletchley Analytics", "bletchley.example.com", "Manchester", "GB"),
    ("Katherine", "Johnson", "Orbital Paths Inc", "orbital.example.com", "Hampton", "US"),
    ("Edsger", "Dijkstra", "Shortest Route BV", "route.example.nl", "Eindhoven", "NL"),
    ("Barbara", "Liskov", "Substitution Systems", "liskov.example.com", "Boston", "US"),
    ("Hedy", "Lamarr", "Frequency Hop GmbH", "fhop.example.at", "Vienna", "AT"),
    ("Tim", "Berners-Lee", None, None, "Geneva", "CH"),
    ("Margaret", "Hamilton", "Apollo Software", "apollo.example.com", "Cambridge", "US"),
    ("Donald", "Knuth", "Literate Programs", "literate.example.com", "Stanford", "US"),
    ("Sophie", "Wilson", "Acorn Instruments", "acorn.example.co.uk", "Cambridge", "GB"),
    ("Linus", "Torvalds", "Kernel Works Oy", "kernel.example.fi", "Helsinki", "FI"),
    ("Radia", "Perlman", "Spanning Tree Co", "stp.example.com", "Seattle", "US"),
    ("John", "McCarthy", None, None, "Palo Alto", "US"),
    ("Frances", "Allen", "Optimizing Compilers", "fortran.example.com", "Peru", "US"),
    ("Ken", "Thompson", "Bell Systems", "bell.example.com", "Murray Hill", "US"),
    ("Karen", "Spärck Jones", "Inverse Document Ltd", "idf.example.co.uk", "Cambridge", "GB"),
    ("Guido", "van Rossum", "Benevolent Scripts", "bdfl.example.nl", "Amsterdam", "NL"),
    ("Shafi", "Goldwasser", "Zero Knowledge Labs", "zk.example.il", "Rehovot", "IL"),
]
STAGES = ["lead", "prospect", "customer", "customer", "churned"]
PLANS = [("starter", "29.00"), ("growth", "99.00"), ("scale", "349.00")]


def _email(first: str, last: str, domain: str) -> str:
    local = unicodedata.normalize("NFKD", f"{first}.{last}").encode("ascii", "ignore").decode()
    return f"{local.lower().replace(' ', '')}@{domain}"


def api_pages() -> tuple[str, str]:
    rng = random.Random(SEED + 1)
    records = []
    for n, (first, last, company, domain, city, cc) in enumerate(PEOPLE, start=1):
        updated = datetime(2026, 11, 26, 9, 0) + timedelta(minutes=n * 37 + rng.randrange(30))
        attributes: dict = {
            "first_name": first,
            "last_name": last,
            # APIs hand back whatever users typed: mixed case, stray spaces.
            "email": _messy(rng, _email(first, last, domain or "mail.example.net")),
            "company": {"name": company, "domain": domain} if company else None,
            "address": {"city": city, "country_code": cc},
            "tags": rng.sample(
                ["newsletter", "vip", "beta", "partner", "webinar"], rng.randint(0, 3)
            ),
            "updated_at": updated.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        if rng.random() < 0.75:  # the API omits empty fields
            attributes["phone"] = f"+1 555 01{n:02d}"
        if rng.random() < 0.85:
            attributes["lifecycle_stage"] = _messy(rng, rng.choice(STAGES))
        subscriptions = []
        for k in range(rng.choice([0, 1, 1, 2])):
            plan, mrr = rng.choice(PLANS)
            subscriptions.append(
                {
                    "id": f"sub_{n:03d}_{k + 1}",
                    "plan": plan,
                    "status": rng.choice(["active", "active", "past_due", "cancelled"]),
                    "mrr": mrr,
                    "started_on": (updated - timedelta(days=rng.randrange(20, 400)))
                    .date()
                    .isoformat(),
                }
            )
        records.append(
            {
                "id": f"con_{n:04d}",
                "type": "contact",
                "attributes": attributes,
                "subscriptions": subscriptions,
            }
        )
    first, second = records[:10], records[10:]
    # Contact 4 changed while the client paged: page 2 repeats it, newer, with a new plan status.
    changed = json.loads(json.dumps(records[3]))
    changed["attributes"]["lifecycle_stage"] = "customer"
    changed["attributes"]["updated_at"] = "2026-11-27T10:05:00Z"
    changed["subscriptions"] = (
        [dict(changed["subscriptions"][0], status="active", plan="scale", mrr="349.00")]
        if changed["subscriptions"]
        else []
    )
    second.insert(2, changed)
    url = "https://crm.example.com/api/v2/contacts"
    page1 = {
        "data": first,
        "meta": {"page": 1, "per_page": 10, "total": 19, "next": f"{url}?page=2"},
    }
    page2 = {"data": second, "meta": {"page": 2, "per_page": 10, "total": 19, "next": None}}
    return json.dumps(page1, indent=2, ensure_ascii=False) + "\n", json.dumps(
        page2, indent=2, ensure_ascii=False
    ) + "\n"


# --- a web server's access log (log analyzer) --------------------------------------------------

ROUTES = [
    # method, path template, weight, {status: weight}, response bytes (low, high)
    ("GET", "/", 10, {200: 20, 304: 3}, (5200, 7400)),
    ("GET", "/products", 8, {200: 30}, (18000, 26000)),
    ("GET", "/products/{id}", 12, {200: 25, 404: 3}, (6000, 12000)),
    ("GET", "/api/orders/{id}", 9, {200: 20, 404: 2, 500: 2}, (700, 2400)),
    ("POST", "/api/orders", 6, {201: 15, 400: 3, 502: 2, 503: 1}, (300, 900)),
    ("GET", "/api/search", 7, {200: 30, 400: 1}, (2000, 31000)),
    ("POST", "/login", 5, {302: 10, 401: 4}, (180, 420)),
    ("GET", "/static/app.js", 9, {200: 5, 304: 20}, (48213, 48213)),
    ("GET", "/healthz", 4, {200: 1}, (2, 2)),
]
AGENTS = [
    "Mozilla/5.0 (X11; Linux x86_64; rv:132.0) Gecko/20100101 Firefox/132.0",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_6) AppleWebKit/605.1.15 Version/18.1 Safari/605.1.15",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/131.0 Safari/537.36",
    "curl/8.11.0",
    "kube-probe/1.31",
]


def access_log() -> str:
    rng = random.Random(SEED + 2)
    lines = []
    t = datetime(2026, 11, 27, 8, 0, 0)
    weights = [r[2] for r in ROUTES]
    # What else lands in a real access log: a TLS handshake sent to the plain-HTTP port,
    # a line cut short when the disk filled, and a scanner's junk request.
    junk = {
        57: '198.51.100.23 - - [{t}] "\\x16\\x03\\x01\\x02\\x00\\x01\\x00\\x01\\xfc\\x03\\x03" 400 157 "-" "-" 0.000',
        211: '203.0.113.41 - - [{t}] "GET /products/2291 HTTP/1.1" 200 51',
        340: '192.0.2.66 - - [{t}] "GET /../../etc/passwd" 400 0 "-" "masscan/1.3" 0.000',
    }
    while t < datetime(2026, 11, 27, 12, 0, 0):
        stamp = t.strftime("%d/%b/%Y:%H:%M:%S +0000")
        if len(lines) in junk:
            lines.append(junk[len(lines)].format(t=stamp))
        method, template, _, statuses, (low, high) = rng.choices(ROUTES, weights)[0]
        path = template.replace("{id}", str(rng.randrange(1, 5000)))
        if template == "/api/search":
            path += "?q=" + rng.choice(["grinder", "beans", "mug", "kettle+gooseneck"])
        status = rng.choices(list(statuses), list(statuses.values()))[0]
        size = 0 if status in (204, 304) else rng.randint(low, high)
        ms = rng.randrange(1, 40) if status < 500 else rng.randrange(900, 5000)
        ip = f"203.0.113.{rng.randrange(1, 60)}" if template != "/healthz" else "10.0.0.7"
        agent = "kube-probe/1.31" if template == "/healthz" else rng.choice(AGENTS[:4])
        referer = (
            "-" if rng.random() < 0.5 or template == "/healthz" else "https://shop.example.com/"
        )
        lines.append(
            f'{ip} - - [{stamp}] "{method} {path} HTTP/1.1" {status} {size} "{referer}" "{agent}" {ms / 1000:.3f}'
        )
        t += timedelta(seconds=rng.randrange(5, 60))
    return "\n".join(lines) + "\n"


# --- a stock count and the stock ledger (fails on purpose) ------------------------------------

LOCATIONS = ["A", "B", "C"]


def inventory() -> tuple[str, str]:
    rng = random.Random(SEED + 3)
    ledger = [["sku", "location", "movement", "qty", "moved_at"]]
    counts = [["sku", "location", "counted_qty", "counted_by", "counted_at"]]
    counters = ["j.ortiz", "m.kowalski", "s.ahmed"]
    for i, (sku, *_rest) in enumerate(PRODUCTS):
        for j, loc in enumerate(LOCATIONS):
            balance = 0
            at = datetime(2026, 11, 1, 6, 0) + timedelta(hours=i * 3 + j)
            for _ in range(rng.randint(3, 6)):
                if balance < 10 or rng.random() < 0.35:
                    qty = rng.choice([12, 24, 36, 48])
                    ledger.append([sku, loc, "receipt", qty, at.isoformat(sep=" ")])
                else:
                    qty = -rng.randint(1, balance)
                    ledger.append([sku, loc, "sale", qty, at.isoformat(sep=" ")])
                balance += qty
                at += timedelta(hours=rng.randrange(20, 70))
            counted = balance
            # The count found what the books do not know: three missing, one extra.
            if (sku, loc) == ("SKU-102", "A"):
                counted = balance - 3
            if (sku, loc) == ("SKU-107", "C"):
                counted = balance + 1
            # A counter typed a minus sign: that row is quarantined, so its bin goes uncounted.
            if (sku, loc) == ("SKU-104", "B"):
                counted = -balance
            counts.append(
                [
                    sku,
                    loc,
                    counted,
                    counters[(i + j) % 3],
                    f"2026-11-27 {7 + i % 4:02d}:{j * 17:02d}:00",
                ]
            )
    # Rows a count sheet should never have: no SKU, and a location the warehouse lacks.
    counts.insert(9, ["", "B", 5, "m.kowalski", "2026-11-27 08:40:00"])
    counts.insert(20, ["SKU-105", "Z", 2, "s.ahmed", "2026-11-27 09:05:00"])
    return _csv(counts), _csv(ledger)


def write_all(out: Path) -> list[Path]:
    orders_csv, late_csv, products_csv = orders()
    page1, page2 = api_pages()
    counts_csv, ledger_csv = inventory()
    files = {
        "customers.csv": _csv(CUSTOMERS),
        "orders.csv": orders_csv,
        "orders_late_updates.csv": late_csv,
        "products.csv": products_csv,
        "pos/sales_2026-11-25.ndjson": pos_day("2026-11-25", SEED + 25),
        "pos/sales_2026-11-26.ndjson": pos_day("2026-11-26", SEED + 26),
        "pos/sales_2026-11-27.ndjson": pos_day("2026-11-27", SEED + 27, late_sync=True),
        "api/contacts_page_1.json": page1,
        "api/contacts_page_2.json": page2,
        "logs/access.log": access_log(),
        "inventory/stock_count_2026-11-27.csv": counts_csv,
        "inventory/stock_ledger.csv": ledger_csv,
    }
    written = []
    for name, text in files.items():
        path = out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8", newline="")
        written.append(path)
    return written


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent
    for p in write_all(target):
        print(f"{p.stat().st_size:>7}  {p}")
