"""The web UI on a large queue: ``python3 -m bench.webui [--rows N] [--write]``.

Fills a throw-away SQLite database with N queue rows, N delivery rows and N
contacts (default one million each; direct SQL for speed, then the log's
rollups recounted with the same statements the schema migrations use, which
is timed too): half the contacts in a list, 30 mailouts of which one is
still sending with 30% of the queue rows, half the log rows from mailouts.
It measures the server time of each page: the time the Flask
application spends on the request (its Server-Timing header), median and
worst of several requests after one warm-up, through Flask's test client as
a logged-in admin.  Every figure has a baseline from the same run: the same
page on an empty database, and the queries the pages avoid (OFFSET paging,
counting and grouping the delivery log itself) timed on the same data.

Prints a Markdown table; --write puts it into docs/BENCHMARKS.md as the
section "Web UI pages on a large queue" (replacing an earlier one).
Nothing is left behind: the database lives in a temporary directory.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import random
import re
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from flask.testing import FlaskClient

from spoold import config as config_mod
from spoold import passwords
from spoold.store import store_for
from spoold.store.sqlite import SQLiteStore
from webui.app import create_app

DOCS = Path(__file__).resolve().parent.parent / "docs" / "BENCHMARKS.md"
HEADING = "## Web UI pages on a large queue"
TARGET_MS = 300.0
DOMAINS = 2000
MAILOUTS = 30
PASSWORD = "bench-password"
DAY = 86400


def _domain(rng: random.Random, weights: list[float]) -> str:
    return f"d{rng.choices(range(DOMAINS), cum_weights=weights)[0]}.example"


def fill(path: Path, rows: int, seed: int = 5) -> None:
    """``rows`` queue rows and ``rows`` delivery rows, shaped like a busy spool:
    destination domains Zipf-distributed, the queue mostly due with a share
    deferred, held and in flight, the log spread over 30 days."""
    rng = random.Random(seed)
    weights, total = [], 0.0
    for rank in range(1, DOMAINS + 1):
        total += 1 / rank
        weights.append(total)
    now = time.time()
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA synchronous=OFF")
    db.execute("BEGIN")
    body = b"From: news@bench.example\r\nSubject: Bench\r\n\r\n" + b"x" * 1000 + b"\r\n"
    messages = max(1, rows // 100)
    db.executemany("INSERT INTO message (sender, body, size, created_at) VALUES (?, ?, ?, ?)",
                   [("news@bench.example", body, len(body), now - DAY)] * messages)
    queue = []
    for i in range(rows):
        domain = _domain(rng, weights)
        roll = rng.random()
        state, attempts, due, owner, reply = "queued", 0, now - rng.random() * 3600, None, None
        if roll < 0.01:
            state = "held"
        elif roll < 0.012:
            state, owner = "active", "bench:1"
        elif roll < 0.162:
            attempts, due = rng.randint(1, 5), now + rng.uniform(60, 4000)
            reply = "451 4.7.1 Greylisted, please try again later"
        queue.append((i % messages + 1, "news@bench.example", f"user{i}@{domain}", domain, 1,
                      state, attempts, now - DAY + i * DAY / rows, due, now + 4 * DAY, owner,
                      now + 600 if owner else None, 451 if reply else None,
                      "4.7.1" if reply else None, reply))
    db.executemany("INSERT INTO notify (message_id, sender, recipient, domain, priority, state, "
                   "attempts, created_at, not_before, expires_at, lease_owner, lease_until, "
                   "last_code, last_dsn, last_reply) VALUES "
                   "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", queue)
    del queue
    outcomes = (("sent", 250, "2.0.0", "250 2.0.0 Ok: queued as 4F2A1B"),
                ("deferred", 451, "4.7.1", "451 4.7.1 Greylisted, please try again later"),
                ("bounced", 550, "5.1.1", "550 5.1.1 No such user here"),
                ("expired", 451, "4.4.7", "Message expired after 5 days"))
    stamps = sorted(now - rng.random() * 30 * DAY for _ in range(rows))
    log = []
    for i, at in enumerate(stamps):
        domain = _domain(rng, weights)
        status, code, dsn, reply = rng.choices(outcomes, cum_weights=(85, 95, 99, 100))[0]
        log.append((rng.randint(1, rows), 1, "news@bench.example", f"user{i}@{domain}", domain,
                    status, code, dsn, reply, f"mx1.{domain}[192.0.2.{i % 250 + 1}]:25",
                    rng.uniform(0.1, 5), 1, at))
    db.executemany("INSERT INTO delivery (notify_id, message_id, sender, recipient, domain, "
                   "status, code, dsn, reply, relay, delay, attempt, at) VALUES "
                   "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", log)
    _fill_mailouts(db, rng, rows, now)
    db.execute("COMMIT")
    db.execute("ANALYZE")
    db.close()


def _fill_mailouts(db: sqlite3.Connection, rng: random.Random, rows: int, now: float) -> None:
    """``rows`` contacts (every other one in list news, the first 1,000 in vip),
    template news, MAILOUTS
    mailouts (the first still sending, the rest done); 30% of the queue rows are
    the first mailout's, half the log rows some mailout's."""
    db.executemany("INSERT INTO contact (email, email_key, domain, name, attributes, "
                   "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                   ((f"reader{i}@{d}", f"reader{i}@{d}", d, f"Reader {i}",
                     f'{{"city": "City{i % 500}", "plan": "{("free", "pro")[i % 2]}"}}',
                     now - DAY, now - DAY)
                    for i, d in ((i, f"d{i % DOMAINS}.example") for i in range(rows))))
    db.executemany("INSERT INTO contact_attribute (name) VALUES (?)", [("city",), ("plan",)])
    db.executemany("INSERT INTO contact_list (name, created_at) VALUES (?, ?)",
                   [("news", now), ("vip", now)])
    db.executemany("INSERT INTO list_member (list_id, contact_id) VALUES (?, ?)",
                   ((1, i) for i in range(1, rows + 1, 2)))
    db.executemany("INSERT INTO list_member (list_id, contact_id) VALUES (2, ?)",
                   ((i,) for i in range(1, min(rows, 1000) + 1)))
    db.execute("INSERT INTO template (name, subject, text_body, html_body, created_at, "
               "updated_at) VALUES ('news', 'News for {{ name }}', 'Hello {{ name }} of "
               "{{ attributes.city }}', '<p>Hello {{ name }}</p>', ?, ?)", (now, now))
    mine = rows * 3 // 10
    db.executemany("INSERT INTO mailout (template_id, sender, selection, list_id, status, "
                   "send_at, expires_at, priority, expand_cursor, expand_until, expanded, "
                   "created_at, started_at, finished_at) VALUES (1, 'news@bench.example', "
                   "'list', 1, ?, ?, ?, 2, ?, ?, ?, ?, ?, ?)",
                   [("sending" if m == 0 else "done", now - m * DAY, now + 4 * DAY, rows, rows,
                     mine if m == 0 else rows // 2, now - m * DAY, now - m * DAY,
                     None if m == 0 else now - m * DAY + 3600) for m in range(MAILOUTS)])
    db.execute("UPDATE notify SET mailout_id = 1, contact_id = id, message_id = 0 "
               "WHERE id % 10 < 3")
    db.execute(f"UPDATE delivery SET mailout_id = 1 + id % {MAILOUTS} WHERE id % 2 = 0")


def _seed_empty(config: config_mod.Config, contact_id: int) -> None:
    """The objects the pages name (list, template, mailouts, one contact), in the
    otherwise empty database of the baseline."""
    store_for(config).close()
    db = sqlite3.connect(config.database.url[len("sqlite://"):], isolation_level=None)
    db.execute("BEGIN")
    _fill_mailouts(db, random.Random(5), 0, time.time())
    db.execute("INSERT INTO contact (id, email, email_key, domain, name, attributes, "
               "created_at, updated_at) VALUES (?, 'one@d0.example', 'one@d0.example', "
               "'d0.example', 'One', '{}', 0, 0)", (contact_id,))
    db.execute("COMMIT")
    db.close()


def _config(work: Path) -> config_mod.Config:
    path = work / "spoold.toml"
    path.write_text(config_mod.dump({"database": {"url": f"sqlite://{work / 'spool.db'}"},
                                     "runner": {"run_dir": str(work / "run")},
                                     "webui": {"login_limit": "1000 per minute"},
                                     "log": {"format": "kv", "level": "error"}}))
    return config_mod.load(path)


def _client(config: config_mod.Config) -> tuple[FlaskClient, str]:
    store = store_for(config)
    store.add_user("bench", "admin", passwords.hash_password(PASSWORD))
    token, digest = passwords.new_token()
    store.add_token("bench", digest)
    store.close()
    client = create_app(config).test_client()
    page = client.get("/login").get_data(as_text=True)
    csrf = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', page).group(1)
    client.post("/login", data={"name": "bench", "password": PASSWORD, "csrf_token": csrf})
    return client, token


def _server_ms(client: FlaskClient, path: str, token: str, runs: int) -> list[float]:
    headers = {"Authorization": f"Bearer {token}"}
    times = []
    for _ in range(runs + 1):
        response = client.get(path, headers=headers)
        response.get_data()
        assert response.status_code == 200, (path, response.status_code)
        times.append(float(response.headers["Server-Timing"].split("dur=")[1]))
    return times[1:]


def _sql_ms(db: sqlite3.Connection, sql: str, params: tuple = (), runs: int = 3) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        db.execute(sql, params).fetchall()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def _pages(deep_queue: int, deep_log: int, big_domain: str, queued_to: str,
           logged_to: str, deep_contact: int) -> list[tuple[str, str]]:
    return [
        ("dashboard", "/"),
        ("dashboard counters (polled JSON)", "/dashboard.json"),
        ("API counters", "/api/v1/counters"),
        ("queue, first page", "/queue"),
        ("queue, deep page (keyset)", f"/queue?after={deep_queue}"),
        ("queue, state=held", "/queue?state=held"),
        ("queue, busiest domain, deep page", f"/queue?domain={big_domain}&after={deep_queue}"),
        ("queue, one recipient", f"/queue?recipient={queued_to}"),
        ("statistics", "/stats"),
        ("statistics, log deep page", f"/stats?before={deep_log}"),
        ("statistics, search recipient", f"/stats?q={logged_to}"),
        ("chart per hour (SVG)", "/stats/hourly.svg"),
        ("chart per day (SVG)", "/stats/daily.svg"),
        ("/metrics", "/metrics"),
        ("contacts, first page", "/contacts"),
        ("contacts, deep page (keyset)", f"/contacts?after={deep_contact}"),
        ("contacts of a list, deep page", f"/contacts?list=news&after={deep_contact}"),
        ("contacts, search (a name near the end)", f"/contacts?q=reader+{deep_contact - 2}"),
        ("contacts, search with no match", "/contacts?q=nobody-at-all"),
        ("contact", f"/contacts/{deep_contact}"),
        ("lists (members counted)", "/lists"),
        ("templates", "/templates"),
        ("template editor with its preview", "/templates/edit?name=news"),
        ("send page", "/send"),
        ("mailouts", "/mailouts"),
        ("mailout sending to 30% of the queue", "/mailouts/1"),
        ("API mailout counters", "/api/v1/mailouts/1"),
        ("queue, one mailout, deep page", f"/queue?mailout=1&after={deep_queue}"),
        ("campaigns", "/campaigns"),
    ]


def _baselines(path: Path, deep: int, deep_contact: int) -> list[tuple[str, float, float]]:
    """(what, the page's way, the naive way) in ms, straight SQL on the filled database."""
    db = sqlite3.connect(path)
    now = time.time()
    midnight = datetime.datetime.combine(datetime.date.today(), datetime.time()).timestamp()
    page = ("SELECT n.id, n.recipient, n.state FROM notify n JOIN message m ON "
            "m.id = n.message_id")
    out = [
        (f"queue page at row {deep:,}: keyset vs OFFSET",
         _sql_ms(db, f"{page} WHERE n.id > ? ORDER BY n.id LIMIT 51", (deep,)),
         _sql_ms(db, f"{page} ORDER BY n.id LIMIT 51 OFFSET ?", (deep,))),
        ("attempts today by status: rollup vs the log",
         _sql_ms(db, "SELECT status, SUM(n) FROM delivery_minute WHERE minute >= ? "
                     "GROUP BY status", (int(midnight // 60 * 60),)),
         _sql_ms(db, "SELECT status, COUNT(*) FROM delivery WHERE at >= ? GROUP BY status",
                 (midnight,))),
        ("attempts per hour, 48 h: rollup vs the log",
         _sql_ms(db, "SELECT FLOOR(minute / 3600) * 3600, status, SUM(n) FROM delivery_minute "
                     "WHERE minute >= ? GROUP BY 1, 2", (int(now - 48 * 3600),)),
         _sql_ms(db, "SELECT FLOOR(at / 3600) * 3600, status, COUNT(*) FROM delivery "
                     "WHERE at >= ? GROUP BY 1, 2", (now - 48 * 3600,))),
        ("top domains, 7 days: rollup vs the log",
         _sql_ms(db, "SELECT domain, SUM(n) FROM delivery_domain_day WHERE day >= ? "
                     "GROUP BY domain ORDER BY 2 DESC LIMIT 20", (int(now - 7 * DAY),)),
         _sql_ms(db, "SELECT domain, COUNT(*) FROM delivery WHERE at >= ? GROUP BY domain "
                     "ORDER BY 2 DESC LIMIT 20", (now - 7 * DAY,))),
        ("queue counters: `state_counts()` vs GROUP BY state and the deferred rows read "
         "one by one (the plan before schema 2)",
         _call_ms(SQLiteStore(path).state_counts),
         _sql_ms(db, "SELECT state, COUNT(*) FROM notify GROUP BY state")
         + _sql_ms(db, "SELECT COUNT(*) FROM notify INDEXED BY notify_state WHERE state = "
                       "'queued' AND attempts > 0 AND not_before > ?", (now,))),
        (f"contacts page at contact {deep_contact:,}: keyset vs OFFSET",
         _sql_ms(db, "SELECT id, email FROM contact WHERE id > ? ORDER BY id LIMIT 51",
                 (deep_contact,)),
         _sql_ms(db, "SELECT id, email FROM contact ORDER BY id LIMIT 51 OFFSET ?",
                 (deep_contact,))),
        ("a page of mailouts' outcomes: rollup vs the log",
         _sql_ms(db, "SELECT mailout_id, status, n FROM delivery_by_mailout WHERE "
                     f"mailout_id IN ({_marks(MAILOUTS)})", tuple(range(1, MAILOUTS + 1))),
         _sql_ms(db, "SELECT mailout_id, status, COUNT(*) FROM delivery WHERE mailout_id IN "
                     f"({_marks(MAILOUTS)}) GROUP BY mailout_id, status",
                 tuple(range(1, MAILOUTS + 1)))),
    ]
    db.close()
    return out


def _marks(count: int) -> str:
    return ",".join("?" * count)


def _call_ms(fn: Callable[[], object], runs: int = 3) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def _timed(what: str, fn: Callable[[], None]) -> float:
    print(f"{what}...", end=" ", flush=True, file=sys.stderr)
    started = time.perf_counter()
    fn()
    seconds = time.perf_counter() - started
    print(f"{seconds:.1f} s", file=sys.stderr)
    return seconds


def run(rows: int, runs: int) -> str:
    with tempfile.TemporaryDirectory(prefix="spoold-bench-webui-") as tmp:
        empty_dir, full_dir = Path(tmp) / "empty", Path(tmp) / "full"
        empty_dir.mkdir()
        full_dir.mkdir()
        empty, full = _config(empty_dir), _config(full_dir)
        store = store_for(full)
        store.close()
        fill_s = _timed(f"filling {rows:,} queue, delivery and contact rows",
                        lambda: fill(full_dir / "spool.db", rows))
        store = store_for(full)
        rollup_s = _timed("recounting the rollups (the migration's fill)", store.rebuild_rollups)
        deep_queue = store.queue_rows(limit=1, after=int(rows * 0.9))[0]
        deep_log = store.deliveries(limit=1, before=int(rows * 0.1))[0]
        deep_contact = store.contacts(limit=1, after=int(rows * 0.9))[0]["id"]
        store.close()
        _seed_empty(empty, deep_contact)
        results = []
        pages = _pages(deep_queue["id"], deep_log["id"], "d0.example",
                       deep_queue["recipient"], deep_log["recipient"], deep_contact)
        clients = {"empty": _client(empty), "full": _client(full)}
        for name, path in pages:
            base = _server_ms(*clients["empty"][:1], path, clients["empty"][1], runs)
            big = _server_ms(*clients["full"][:1], path, clients["full"][1], runs)
            results.append((name, path, statistics.median(base), statistics.median(big),
                            max(big)))
            print(f"  {name}: {statistics.median(big):.1f} ms", file=sys.stderr)
        baselines = _baselines(full_dir / "spool.db", deep_queue["id"], deep_contact)
    return _report(rows, runs, fill_s, rollup_s, results, baselines)


def _report(rows: int, runs: int, fill_s: float, rollup_s: float,
            results: list[tuple[str, str, float, float, float]],
            baselines: list[tuple[str, float, float]]) -> str:
    worst = max(r[4] for r in results)
    lines = [
        HEADING, "",
        f"`python3 -m bench.webui --rows {rows}`: {rows:,} queue rows, {rows:,} delivery "
        f"rows and {rows:,} contacts (2,000 Zipf-distributed domains; the log spread over "
        f"30 days; half the contacts in list news; {MAILOUTS} mailouts, one of them still "
        "sending to 30% of the queue, and half the log from mailouts) in SQLite, "
        "filled with direct SQL. Server time is what the Flask application spends on a "
        "request (its `Server-Timing` header), through the test client as a logged-in admin; "
        f"median and worst of {runs} requests after a warm-up. The baseline is the same page "
        "on an empty database, in the same run.", "",
        f"Machine: {os.cpu_count()} cores, Python {platform.python_version()}, SQLite "
        f"{sqlite3.sqlite_version}, {platform.machine()}; {datetime.date.today()}. "
        f"Fill {fill_s:.0f} s; recounting the rollups from {rows:,} log rows (what schema "
        f"migrations 5 and 7 do on an existing log) {rollup_s:.1f} s.", "",
        f"| page | path | empty db, ms | {rows:,} rows, median ms | worst ms |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {name} | `{path}` | {base:.1f} | {big:.1f} | {high:.1f} |"
              for name, path, base, big, high in results]
    lines += ["", f"Target: every page at most {TARGET_MS:.0f} ms. Worst request: "
              f"**{worst:.1f} ms** ({'met' if worst <= TARGET_MS else 'NOT MET'}).", "",
              "What the pages avoid, timed as plain SQL on the same data (median of 3):", "",
              "| query | the page's way, ms | the naive way, ms |", "|---|---|---|"]
    lines += [f"| {what} | {mine:.1f} | {naive:.1f} |" for what, mine, naive in baselines]
    lines += ["", "How the pages stay flat: lists page by id (keyset), never by OFFSET; the "
              "figures over time and by domain come from rollups (`delivery_minute`, "
              "`delivery_domain_day`, `delivery_total`) that the transaction logging each "
              "attempt keeps exact, never from the log itself; the queue counters take the "
              "queued rows as the total (a COUNT(*) SQLite answers from its b-tree) less the "
              "small states, and count deferred rows on index `notify_due`, which covers that "
              "query; a mailout's outcomes come from the rollup `delivery_by_mailout` and its "
              "queue rows by state from index `notify_mailout_state`, which covers that "
              "count. What is left is rendering: pygal draws a chart in about 25 ms, and the "
              "daily chart groups 30 days of per-minute rollup rows. The one page that reads "
              "a whole table is a contacts search for a rare text: a substring of an address "
              "or a name has no index to use, so it reads every contact (the page stops at "
              "the first 50 matches, so a common text costs little)."]
    return "\n".join(lines) + "\n"


def write(section: str) -> None:
    text = DOCS.read_text()
    start = text.find(HEADING)
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = text.find("\n## ", start + len(HEADING))
        text = text[:start] + section + (text[end + 1:] if end >= 0 else "")
    DOCS.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.webui", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=7, help="timed requests per page")
    parser.add_argument("--write", action="store_true", help=f"update {DOCS}")
    args = parser.parse_args(argv)
    section = run(args.rows, args.runs)
    print(section)
    if args.write:
        write(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
