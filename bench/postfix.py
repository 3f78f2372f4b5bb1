"""A private Postfix instance for the benchmark: the reference spooler.

Debian's ``postfix`` package, configured here and nowhere else: its own
config directory, queue and log under the benchmark's work directory,
listening on 127.0.0.1 only, relaying everything to the sinks through
``transport_maps`` (``smtp:[host]:port``, so no DNS lookup happens) with
DNS disabled.  Process cap and per-destination concurrency are Postfix's
own settings (default_process_limit, default_destination_concurrency_limit)
and are set equal to spoold's max_children and destination_concurrency.
Each start uses an empty queue.  The only change outside the work
directory is the one Postfix requires for a second config directory: its
path in ``alternate_config_directories`` of the default main.cf.

Mail comes in over SMTP from ``smtp-source`` (Postfix's own load generator,
many sessions, several messages per connection) or, for the latency
scenario, through ``sendmail`` and the pickup daemon, as applications do.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.inject import CLIENTS
from bench.procs import Procs, tree_cpu

SMTPD = "127.0.0.1:10025"
SENDER = "bench@postfix.bench.test"

MASTER_CF = """\
{smtpd} inet n - n - - smtpd
pickup    unix  n - n 60   1 pickup
cleanup   unix  n - n -    0 cleanup
qmgr      unix  n - n 300  1 qmgr
rewrite   unix  - - n -    - trivial-rewrite
bounce    unix  - - n -    0 bounce
defer     unix  - - n -    0 bounce
trace     unix  - - n -    0 bounce
verify    unix  - - n -    1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n -    - proxymap
smtp      unix  - - n -    - smtp
showq     unix  n - n -    - showq
error     unix  - - n -    - error
retry     unix  - - n -    - error
discard   unix  - - n -    - discard
anvil     unix  - - n -    1 anvil
scache    unix  - - n -    1 scache
postlog   unix-dgram n - n - 1 postlogd
"""


def version() -> str:
    out = subprocess.run(["postconf", "-d", "-h", "mail_version"], capture_output=True,
                         text=True, check=True)
    return out.stdout.strip()


class Postfix:
    def __init__(self, procs: Procs, work: Path, transport: dict[str, str],
                 process_limit: int, destination_concurrency: int):
        self.procs = procs
        self.work = work / "postfix"
        self.etc = self.work / "etc"
        self.transport = transport
        self.process_limit = process_limit
        self.destination_concurrency = destination_concurrency
        self.master_pid = 0

    def _write_config(self) -> None:
        self.etc.mkdir(parents=True, exist_ok=True)
        (self.etc / "transport").write_text(
            "".join(f"{domain} smtp:{nexthop}\n" for domain, nexthop in self.transport.items()))
        (self.etc / "master.cf").write_text(MASTER_CF.format(smtpd=SMTPD))
        (self.etc / "main.cf").write_text(f"""\
compatibility_level = 3.6
queue_directory = {self.work / 'spool'}
data_directory = {self.work / 'data'}
maillog_file_prefixes = {self.work}
maillog_file = {self.work / 'maillog'}
myhostname = postfix.bench.test
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
transport_maps = texthash:{self.etc / 'transport'}
smtp_dns_support_level = disabled
smtp_tls_security_level = none
smtpd_tls_security_level = none
default_process_limit = {self.process_limit}
default_destination_concurrency_limit = {self.destination_concurrency}
""")
        _allow_config_directory(self.etc)

    def prepare(self) -> None:
        """Configuration written and the queue emptied."""
        shutil.rmtree(self.work / "spool", ignore_errors=True)
        (self.work / "spool").mkdir(parents=True)
        (self.work / "data").mkdir(exist_ok=True)
        shutil.chown(self.work / "data", "postfix")
        self._write_config()

    def start(self) -> None:
        subprocess.run(["postfix", "-c", str(self.etc), "start"], check=True,
                       capture_output=True)
        pid_file = self.work / "spool" / "pid" / "master.pid"
        self.master_pid = int(pid_file.read_text().split()[0])
        self.procs.adopt(self.master_pid)

    def stop(self) -> None:
        subprocess.run(["postfix", "-c", str(self.etc), "stop"], capture_output=True)
        self.procs.stop(self.master_pid)

    def cpu(self) -> float:
        return tree_cpu(self.master_pid)

    def inject(self, recipients: list[str], size: int, clients: int = CLIENTS) -> float:
        """smtp-source into smtpd, one run per address, ``clients`` at a time.

        Returns 0.0: smtp-source is the application's side, not Postfix's, so
        its CPU is not Postfix's cost (spoold's injector is counted as spoold's).
        """
        by_address: dict[str, int] = {}
        for address in recipients:
            by_address[address] = by_address.get(address, 0) + 1
        sessions = max(1, 20 // clients)

        def source(item: tuple[str, int]) -> None:
            address, count = item
            subprocess.run(["smtp-source", "-d", "-s", str(min(sessions, count)),
                            "-m", str(count), "-l", str(size), "-f", SENDER, "-t", address,
                            "-M", "client.bench.test", SMTPD], check=True,
                           capture_output=True)

        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(source, by_address.items()))
        return 0.0

    def sendmail(self, recipient: str, message: bytes) -> None:
        subprocess.run(["sendmail", "-C", str(self.etc), "-f", SENDER, recipient],
                       input=message, check=True, capture_output=True)

    def wait_idle(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        queues = [self.work / "spool" / name for name in ("maildrop", "incoming", "active")]
        while time.monotonic() < deadline:
            if not any(any(q.rglob("*")) for q in queues if q.exists()):
                return
            time.sleep(0.05)


def _allow_config_directory(etc: Path) -> None:
    """Postfix refuses a config directory the default main.cf does not list."""
    default = Path("/etc/postfix/main.cf")
    if not default.exists():
        default.write_text("compatibility_level = 3.6\n")
    current = subprocess.run(["postconf", "-h", "alternate_config_directories"],
                             capture_output=True, text=True, check=True).stdout.split()
    if str(etc) not in [d.rstrip(",") for d in current]:
        value = " ".join([*current, str(etc)])
        subprocess.run(["postconf", "-e", f"alternate_config_directories = {value}"],
                       check=True)
