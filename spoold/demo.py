"""spoold demo: real delivery to a fake internet on loopback, in one command.

Starts a DNS server and SMTP sinks on 127.0.x.y addresses (spoold.fakenet)
for a set of made-up domains, most of which accept mail, two greylist (450
on the first try, then accept), one rejects every recipient (550 5.1.1), one
publishes a null MX, and one has a dead primary MX so mail falls back to the
second.  It enqueues the messages, runs ``spoold run`` as a real daemon with
a throw-away SQLite queue, waits until the queue settles, and prints what
happened: outcomes against what each domain's behaviour predicts, what the
sinks received, and the delivery rate.  Then it sends a small mailout: a
template with placeholders to a list of contacts spread over the same
domains (one of them unsubscribed), expanded, rendered and delivered by the
same daemon, and prints the mailout's counters.  Nothing leaves the
loopback range.

It also starts the web UI (``spoold-webui``) on a free loopback port over
the same queue and prints its address and a one-time admin login, so the
dashboard can be watched while the demo runs; ``--keep-ui`` keeps it up
after the delivery, until Ctrl-C.  The daemon and the UI are stopped at the
end, and the throw-away directory removed.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from spoold import config as config_mod
from spoold.enqueue import enqueue
from spoold.fakenet import Behaviour, World
from spoold.fakenet.nameserver import free_tcp_port
from spoold.passwords import hash_password
from spoold.poke import poke
from spoold.store import store_for
from spoold.store.contacts import ContactIn
from spoold.store.mailouts import MailoutSpec
from spoold.templates import save_template

GREYLIST = Behaviour(tempfail_first=1)
REJECT = Behaviour(rcpt_reply="550 5.1.1 No such user here")
CITIES = ("Paris", "Lyon", "Lille", "Nantes", "Brest")
NEWSLETTER_TEXT = """Hello {{ name }},

The {{ attributes.city }} shop has new arrivals this week.

Unsubscribe: {{ unsubscribe_url }}
"""
NEWSLETTER_HTML = """<p>Hello {{ name }},</p>
<p>The <b>{{ attributes.city }}</b> shop has new arrivals this week.</p>
<p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p>
"""


@dataclass
class DemoResult:
    messages: int
    seconds: float
    outcomes: dict[str, int]
    received: int
    expected: dict[str, int]
    mailout: dict[str, int] = dataclasses.field(default_factory=dict)
    mailout_expected: dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds else 0.0

    @property
    def ok(self) -> bool:
        mailout_ok = all(self.mailout.get(k) == v for k, v in self.mailout_expected.items())
        return (self.outcomes == self.expected and mailout_ok
                and self.received == self.expected.get("sent", 0) + self.mailout.get("sent", 0))


def build_world(domains: int) -> tuple[World, dict[str, str]]:
    """The fake internet, and what each domain should end as (sent or bounced)."""
    world = World()
    fate: dict[str, str] = {}
    special = ["greylist-a", "greylist-b", "rejects", "nullmx", "fallback"]
    names = [f"{s}.example" for s in special]
    names += [f"shop{i}.example" for i in range(max(0, domains - len(special)))]
    for name in names[:max(domains, len(special))]:
        if name.startswith("greylist"):
            world.add_domain(name, GREYLIST)
        elif name == "rejects.example":
            world.add_domain(name, REJECT)
        elif name == "nullmx.example":
            world.add_null_mx(name)
        elif name == "fallback.example":
            world.add_domain(name, mx_count=2, dead_mx_first=True)
        else:
            world.add_domain(name)
        fate[name] = "bounced" if name in ("rejects.example", "nullmx.example") else "sent"
    return world, fate


def write_demo_config(path: Path, world: World, work: Path, max_use: int,
                      max_children: int, job_size: int) -> config_mod.Config:
    """Settings for the demo; the web UI on a free loopback port serves the unsubscribe
    links of the demo's mailout."""
    ui_port = free_tcp_port("127.0.0.1")
    path.write_text(config_mod.dump({
        "database": {"url": f"sqlite://{work / 'spool.db'}"},
        "runner": {"run_dir": str(work / "run"), "max_children": max_children,
                   "max_use": max_use, "job_size": job_size, "backoff_min": 1, "backoff_max": 2,
                   "scan_interval": 0.5},
        "smtp": {"port": world.port, "helo_name": "demo.spoold.test", "tls": "none",
                 "connect_timeout": 2},
        "dns": {"nameservers": world.nameservers, "port": world.dns.port, "timeout": 3},
        "webui": {"port": ui_port},
        "mailout": {"unsubscribe_url": f"http://127.0.0.1:{ui_port}/unsubscribe/{{token}}"},
        "log": {"format": "kv"},
    }))
    return config_mod.load(path)


def _wait_settled(config: config_mod.Config, timeout: float, show: bool) -> None:
    store = store_for(config)
    deadline = time.monotonic() + timeout
    show = show and sys.stdout.isatty()
    try:
        while time.monotonic() < deadline:
            counts = store.state_counts()
            if show:
                print(f"\r  queued {counts['queued']:5d}  sending {counts['active']:4d}  "
                      f"deferred {counts['deferred']:4d}", end="", flush=True)
            if counts["queued"] + counts["active"] == 0:
                return
            time.sleep(0.2)
        raise TimeoutError(f"the queue did not settle within {timeout:.0f} s")
    finally:
        if show:
            print()
        store.close()


def _final_outcomes(config: config_mod.Config) -> dict[str, int]:
    store = store_for(config)
    try:
        counts = store.delivery_counts(0)
    finally:
        store.close()
    return {k: v for k, v in counts.items() if k != "deferred" and v}


def run_mailout(config: config_mod.Config, fate: dict[str, str],
                contacts: int) -> tuple[dict[str, int], dict[str, int]]:
    """A newsletter to ``contacts`` contacts over the demo's domains; (counters, expected)."""
    names = list(fate)
    store = store_for(config)
    try:
        store.upsert_contacts([ContactIn(f"customer{i}@{names[i % len(names)]}",
                                         f"Customer {i}", {"city": CITIES[i % len(CITIES)]})
                               for i in range(contacts)], "demo-customers")
        store.unsubscribe_contact(f"customer{contacts - 1}@{names[(contacts - 1) % len(names)]}")
        save_template(store, "demo-newsletter", "{{ attributes.city }} news for {{ name }}",
                      NEWSLETTER_TEXT, NEWSLETTER_HTML, create=True)
        now = time.time()
        mailout_id = store.create_mailout(MailoutSpec(
            template="demo-newsletter", sender="Demo Shop <newsletter@demo.spoold.test>",
            selection="list", list_name="demo-customers", send_at=now, expires_at=now + 3600))
        poke(config.runner.run_dir)
        deadline = time.monotonic() + 60 + contacts / 10
        while store.mailout(mailout_id)["status"] != "done":
            if time.monotonic() > deadline:
                raise TimeoutError(f"mailout {mailout_id} did not finish")
            time.sleep(0.2)
        counters = store.mailout(mailout_id)["counters"]
    finally:
        store.close()
    fates = collections.Counter(fate[names[i % len(names)]] for i in range(contacts - 1))
    expected = {"total": contacts, "sent": fates["sent"], "bounced": fates["bounced"],
                "skipped_unsubscribed": 1}
    return counters, expected


def _start_webui(config: config_mod.Config, env: dict[str, str],
                 work: Path) -> tuple[subprocess.Popen, str, str]:
    """The web UI on its port, with a fresh admin "demo": (process, URL, password)."""
    password = secrets.token_urlsafe(9)
    store = store_for(config)
    try:
        store.add_user("demo", "admin", hash_password(password))
    finally:
        store.close()
    log_path = work / "webui.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "webui"], env=env, stdout=log,
                                stderr=log)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        match = re.search(r"webui_listening url=(\S+)", log_path.read_text())
        if match:
            return proc, match.group(1), password
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    raise RuntimeError(f"the web UI did not start: {log_path.read_text()[-500:]}")


def run_once(messages: int = 1000, domains: int = 20, max_use: int = 100,
             max_children: int = 20, job_size: int = 20, show: bool = True,
             contacts: int = 0, webui: bool = False,
             done: Callable[[DemoResult], None] | None = None) -> DemoResult:
    """One demo run in a throw-away directory; returns the figures.

    With ``webui`` the web UI runs alongside; ``done`` is called with the
    figures while everything still runs (the demo's --keep-ui waits there).
    """
    world, fate = build_world(domains)
    names = list(fate)
    with world, tempfile.TemporaryDirectory(prefix="spoold-demo-") as tmp:
        work = Path(tmp)
        config = write_demo_config(work / "spoold.toml", world, work, max_use, max_children,
                                   job_size)
        env = {**os.environ, "SPOOLD_CONFIG": str(config.path)}
        ui = None
        if webui:
            ui, url, password = _start_webui(config, env, work)
            print(f"Web UI: {url}  (log in as demo / {password})")
        log_path = work / "spoold.log"
        with open(log_path, "wb") as log:
            daemon = subprocess.Popen([sys.executable, "-m", "spoold.cli", "run"], env=env,
                                      stdout=log, stderr=log)
        started = time.monotonic()
        try:
            store = store_for(config)
            for i in range(messages):
                domain = names[i % len(names)]
                enqueue(sender="newsletter@demo.spoold.test",
                        recipients=[f"reader{i}@{domain}"], subject=f"Demo message {i}",
                        body="Hello from spoold.\n", config=config, store=store)
            store.close()
            _wait_settled(config, timeout=120 + messages / 20, show=show)
            seconds = time.monotonic() - started
            mailout, mailout_expected = (run_mailout(config, fate, contacts) if contacts
                                         else ({}, {}))
            expected = collections.Counter(fate[names[i % len(names)]] for i in range(messages))
            outcomes = _final_outcomes(config)
            for status, count in mailout.items():  # the log holds the mailout's outcomes too
                if status in outcomes:
                    outcomes[status] -= count
            result = DemoResult(messages, seconds, {k: v for k, v in outcomes.items() if v},
                                len(world.all_messages()), dict(expected), mailout,
                                mailout_expected)
            if show:
                _show_log_sample(log_path)
            if done:
                done(result)
        finally:
            for proc in (daemon, ui):
                if proc is not None:
                    proc.send_signal(signal.SIGTERM)
                    proc.wait(timeout=60)
        return result


def _show_log_sample(log_path: Path) -> None:
    seen: set[str] = set()
    print("A few lines of the delivery log:")
    for line in log_path.read_text().splitlines():
        if "event=delivery" not in line:
            continue
        status = line.split("status=", 1)[1].split(" ", 1)[0]
        if status not in seen:
            seen.add(status)
            print("  " + line)


def _keep_ui(result: DemoResult) -> None:
    _report(result)
    print("The web UI stays up until Ctrl-C.")
    try:
        signal.pause()
    except KeyboardInterrupt:
        print()


def run_demo(messages: int = 1000, domains: int = 20, contacts: int = 100,
             keep_ui: bool = False) -> int:
    print(f"spoold demo: {messages} messages to {domains} fake domains on loopback, "
          f"then a mailout to {contacts} contacts")
    result = run_once(messages, domains, contacts=contacts, webui=True,
                      done=_keep_ui if keep_ui else None)
    if not keep_ui:
        _report(result)
    return 0 if result.ok else 1


def _report(result: DemoResult) -> None:
    print(f"Delivered in {result.seconds:.1f} s: {result.rate:.0f} messages/s")
    print("Outcome     got   expected")
    for status in sorted(set(result.outcomes) | set(result.expected)):
        print(f"  {status:9s} {result.outcomes.get(status, 0):5d}  "
              f"{result.expected.get(status, 0):5d}")
    if result.mailout:
        print("Mailout 'demo-newsletter' to list demo-customers (one contact unsubscribed):")
        print("  " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in result.mailout.items()
                               if v or k in result.mailout_expected))
    print(f"Messages received by the sinks: {result.received}")
    print("OK: every message ended as its domain's behaviour predicts." if result.ok else
          "MISMATCH: see the figures above.")
