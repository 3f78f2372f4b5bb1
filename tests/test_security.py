"""Security review, as tests: SQL only with bound values, secrets kept out of sight.

- Every f-string in spoold/store that builds SQL interpolates only
  placeholder lists (_marks), fixed column lists and clauses written in the
  code, never a value (values go through ``?`` parameters).
- A database password in the URL never shows in ``spoold status``, ``queue``,
  ``config --show``, ``db upgrade``, ``enqueue`` or ``run``, whether the
  server refuses the connection, refuses the password, or works.
- Sender children get no database credentials: not in their environment,
  argv or config line, and no connection to the database; and no copy of
  the password anywhere in their memory (read from /proc/PID/mem, as
  root), nor in the zygote they are forked from (sender/zygote.py), while
  the runner's own memory, read the same way, does hold it.
"""

from __future__ import annotations

import ast
import os
import re
import secrets
from pathlib import Path
from urllib.parse import quote

import psutil
import pytest

from conftest import _mysql_admin, wait_for

import sender
from sender.protocol import encode_config
from sender.zygote import TITLE as ZYGOTE_TITLE
from spoold.runner import sender_config

ROOT = Path(__file__).resolve().parent.parent
_SQL = re.compile(r"\b(SELECT|INSERT|UPDATE|DELETE|WHERE|FROM|INTO|SET|IN \()\b|LIMIT|ORDER BY")
# What an SQL f-string may interpolate: placeholder lists, fixed identifiers and
# clauses that the store's own code writes (never a caller's value).  Each name
# here was read where it is built: column lists and table names are constants
# of the code (UPPER_CASE names), ``order`` is ASC or DESC, ``sel.*`` and
# ``where`` come from the store's own clauses or the --where compiler
# (spoold/store/filters.py), which binds every value and every attribute name
# as a parameter; ``c`` and the like are bound by a comprehension over such
# constants inside the same expression.
_REVIEWED = {"where", "joiner", "assignments", "column", "columns", "order", "table", "joins",
             "names", "not_before", "keys", "sel", "self"}
_REVIEWED_ATTRIBUTES = {"claim_lock", "row_lock", "insert_ignore", "source", "key", "where",
                        "join", "_DELIVERY"}


def _interpolation_is_fixed(expression: ast.expr) -> bool:
    if isinstance(expression, ast.Call) and getattr(expression.func, "id", "") == "_marks":
        return True  # "?,?,?" whatever it counts
    bound = {target.id for node in ast.walk(expression) if isinstance(node, ast.comprehension)
             for target in ast.walk(node.target) if isinstance(target, ast.Name)}
    for node in ast.walk(expression):
        if isinstance(node, ast.Name) and not (node.id in _REVIEWED or node.id in bound
                                               or node.id.lstrip("_").isupper()):
            return False
        if isinstance(node, ast.Attribute) and node.attr not in _REVIEWED_ATTRIBUTES:
            return False
    return True


def test_store_sql_interpolates_only_placeholders_and_fixed_identifiers():
    checked = 0
    for path in sorted((ROOT / "spoold" / "store").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.JoinedStr):
                continue
            text = "".join(v.value for v in node.values if isinstance(v, ast.Constant))
            if not _SQL.search(text):
                continue  # an error message
            for value in node.values:
                if isinstance(value, ast.FormattedValue):
                    assert _interpolation_is_fixed(value.value), \
                        f"{path.name}:{node.lineno}: {{{ast.unparse(value.value)}}}"
                    checked += 1
    assert checked > 20  # the walk did find the store's SQL


def _outputs(spool, *commands) -> str:
    seen = []
    for command in commands:
        proc = spool.cli(*command, check=False)
        seen.append(proc.stdout.decode() + proc.stderr.decode())
    return "\n".join(seen)


COMMANDS = (("status",), ("queue",), ("config", "--show"), ("db", "upgrade"), ("flush",),
            ("enqueue", "-f", "a@spoold.test", "--to", "b@x.test", "--subject", "s", "--body", "b"),
            ("run", "--drain"))


@pytest.mark.parametrize("where", ["refused", "wrong password"])
def test_database_password_never_shows_when_the_database_fails(spool_factory, where):
    password = "Pw-" + secrets.token_hex(8)
    host = "127.0.0.1:1" if where == "refused" else "127.0.0.1:3306"
    spool = spool_factory(f"mysql://root:{quote(password)}@{host}/spool")
    text = _outputs(spool, *COMMANDS)
    assert "spoold: mysql://127.0.0.1:" in text  # the errors name the server, without the login
    assert password not in text and quote(password) not in text


@pytest.fixture
def mysql_user(mysql_url):
    """A MariaDB account with a password, allowed on the test's database."""
    name = f"spoold_{secrets.token_hex(4)}"
    password = "Pw-" + secrets.token_hex(8) + "-@:/#%?"  # URL syntax in it, quoted in the URL
    database = mysql_url.rsplit("/", 1)[1]
    admin = _mysql_admin()
    try:
        with admin.cursor() as cur:
            cur.execute(f"CREATE USER '{name}'@'127.0.0.1' IDENTIFIED BY %s", (password,))
            cur.execute(f"GRANT ALL ON {database}.* TO '{name}'@'127.0.0.1'")
        yield f"mysql://{name}:{quote(password, safe='')}@127.0.0.1:3306/{database}", password
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP USER IF EXISTS '{name}'@'127.0.0.1'")
        admin.close()


def _runner_at_work(world, spool_factory, url: str):
    """A runner on ``url`` with a sender child and the zygote alive (a slow destination)."""
    from spoold.fakenet import Behaviour

    world.add_domain("slow.test", Behaviour(delay=1.0))
    spool = spool_factory(url)
    spool.cli("enqueue", "-f", "a@spoold.test", "--to", "u1@slow.test", "--to", "u2@slow.test",
              "--subject", "s", "--body", "b")
    runner = psutil.Process(spool.start().pid)
    wait_for(lambda: _children(runner) and _children(runner, ZYGOTE_TITLE), 20,
             "a sender child and the zygote")
    return spool, runner


def _children(runner: psutil.Process, title: str = sender.TITLE) -> list[psutil.Process]:
    return [c for c in runner.children() if title in " ".join(c.cmdline())]


def test_working_runner_and_its_children_hold_no_password_in_sight(world, spool_factory,
                                                                    mysql_user):
    url, password = mysql_user
    spool, runner = _runner_at_work(world, spool_factory, url)
    for child in _children(runner):
        environment = Path(f"/proc/{child.pid}/environ").read_bytes()
        assert password.encode() not in environment and b"mysql://" not in environment
        assert password not in " ".join(child.cmdline())
        assert not [c for c in child.net_connections(kind="tcp")
                    if c.raddr and c.raddr.port == 3306], "a child talks to the database"
    assert password.encode() not in encode_config(sender_config(spool.config))
    spool.wait_settled(timeout=30)
    status = _outputs(spool, ("status",), ("queue",), ("config", "--show"), ("log",))
    spool.stop()
    logs = "\n".join(spool.log_lines())
    assert "sent" in status and '"delivery"' in logs
    for secret in (password, quote(password, safe="")):
        assert secret not in status and secret not in logs


def test_password_with_url_syntax_connects_and_stays_hidden(spool_factory, mysql_user):
    url, password = mysql_user
    spool = spool_factory(url)
    text = _outputs(spool, ("db", "upgrade"), ("config", "--show"))
    assert "schema version" in text and "***" in text
    assert password not in text and quote(password, safe="") not in text


def _memory_holds(pid: int, needles: list[bytes]) -> set[bytes]:
    """Which of ``needles`` occur anywhere in the readable memory of process ``pid``."""
    found, longest = set(), max(map(len, needles))
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as mem:
        for line in maps:
            fields = line.split()
            if "r" not in fields[1] or fields[-1] in ("[vvar]", "[vsyscall]"):
                continue
            start, end = (int(x, 16) for x in fields[0].split("-"))
            tail = b""
            for offset in range(start, end, 1 << 22):
                try:
                    mem.seek(offset)
                    chunk = tail + mem.read(min(1 << 22, end - offset))
                except OSError:
                    break  # a mapping that cannot be read (a guard page)
                found.update(n for n in needles if n in chunk)
                tail = chunk[-longest:]
    return found


@pytest.mark.skipif(os.geteuid() != 0, reason="reading another process's memory needs root")
def test_children_and_their_zygote_hold_no_copy_of_the_password_in_memory(world, spool_factory,
                                                                          mysql_user):
    # A fork of the runner held four copies (settings, URL, the driver's
    # buffers); children now come from a zygote that never saw them.
    url, password = mysql_user
    spool, runner = _runner_at_work(world, spool_factory, url)
    secrets_ = [password.encode(), quote(password, safe="").encode()]
    for process in _children(runner) + _children(runner, ZYGOTE_TITLE):
        assert not _memory_holds(process.pid, secrets_), f"{process.cmdline()} holds it"
    assert _memory_holds(runner.pid, secrets_)  # the runner does: the reading works
    spool.wait_settled(timeout=30)
    spool.stop()
