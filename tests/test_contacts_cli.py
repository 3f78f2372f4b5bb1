"""Contacts and templates from the command line: CSV import, template checks.

The commands run in-process (spoold.cli.main) against a SQLite file.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from spoold import config as config_mod
from spoold.cli import main
from spoold.store import store_for


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    path = tmp_path / "spoold.toml"
    path.write_text(config_mod.dump({"database": {"url": f"sqlite://{tmp_path / 'spool.db'}"},
                                     "runner": {"run_dir": str(tmp_path / "run")},
                                     "smtp": {"helo_name": "shop.example"}}))
    return path


def spoold(conf: Path, *args: str) -> int:
    return main(["--config", str(conf), *args])


def contacts(conf: Path) -> dict[str, dict]:
    store = store_for(config_mod.load(conf))
    try:
        return {c["email"]: c for c in store.contacts(limit=10000)}
    finally:
        store.close()


CSV = ('\ufeffEmail,Name,city,plan\n'
       'ann@a.example,Ann,Paris,free\n'
       'not-an-address,X,Y,Z\n'
       '"bob@b.example","Bob, ""the builder""",Lyon,\n'
       'carol@c.example,Carol\n'
       ',Nobody,Nice,pro\n'
       '\n'
       '"dan@d.example","Dan\nOn two lines",Lille,pro\n'
       'eve@e.example,Eve,Metz,pro\n')


def test_import_reports_bad_lines_and_keeps_the_good(conf, tmp_path, capsys):
    path = tmp_path / "people.csv"
    path.write_text(CSV, encoding="utf-8")
    assert spoold(conf, "contacts", "import", str(path), "--list", "news") == 1
    out, err = capsys.readouterr()
    assert err.splitlines() == ["line 3: bad address 'not-an-address': has no @domain",
                                "line 5: 2 fields where the header has 4",
                                "line 6: no email address"]
    assert out.strip() == "4 contacts added, 0 updated, 3 bad lines skipped (list news)"
    found = contacts(conf)
    assert set(found) == {"ann@a.example", "bob@b.example", "dan@d.example", "eve@e.example"}
    assert found["bob@b.example"]["name"] == 'Bob, "the builder"'
    assert found["bob@b.example"]["attributes"] == {"city": "Lyon"}  # empty cell: no value
    assert found["dan@d.example"]["name"] == "Dan\nOn two lines"

    path.write_text("email,plan\nANN@a.example,pro\nfred@f.example,free\n")
    assert spoold(conf, "contacts", "import", str(path)) == 0
    assert capsys.readouterr().out.strip() == "1 contact added, 1 updated"
    found = contacts(conf)
    assert len(found) == 5
    assert found["ANN@a.example"]["attributes"] == {"city": "Paris", "plan": "pro"}


def test_strict_import_refuses_the_whole_file(conf, tmp_path, capsys):
    path = tmp_path / "people.csv"
    path.write_text(CSV, encoding="utf-8")
    assert spoold(conf, "contacts", "import", str(path), "--strict") == 65
    err = capsys.readouterr().err
    assert "3 bad lines, nothing imported" in err
    for line in (3, 5, 6):
        assert f"  line {line}: " in err
    assert contacts(conf) == {}


@pytest.mark.parametrize("content, error", [
    ("name,city\nann,Paris\n", "line 1: no 'email' column"),
    ("email,first name\na@b.example,A\n", "column 'first name' is not a usable attribute"),
    ("email,city,City\n", "column 'city' appears twice"),
    ("", "the file is empty"),
])
def test_import_refuses_bad_headers(conf, tmp_path, capsys, content, error):
    path = tmp_path / "people.csv"
    path.write_text(content)
    assert spoold(conf, "contacts", "import", str(path)) == 65
    assert error in capsys.readouterr().err


def test_import_reports_bytes_that_are_not_utf8(conf, tmp_path, capsys):
    path = tmp_path / "people.csv"
    path.write_bytes(b"email,name\na@a.example,Ren\xe9\nb@b.example,Bea\n")
    assert spoold(conf, "contacts", "import", str(path)) == 1
    assert capsys.readouterr().err.strip() == "line 2: not UTF-8 text"
    assert set(contacts(conf)) == {"b@b.example"}


def test_templates_are_checked_when_saved(conf, tmp_path, capsys):
    people = tmp_path / "people.csv"
    people.write_text("email,name,city\nann@a.example,Ann,Paris\n")
    spoold(conf, "contacts", "import", str(people))
    good = tmp_path / "good.txt"
    good.write_text("Hello {{ name }} of {{ attributes.city }}\n{{ unsubscribe_url }}\n")
    bad = tmp_path / "bad.txt"
    bad.write_text("Hello {{ name }}\n{% for x in attributes %}{{ x }}{% endfor %}\n"
                   "{{ nmae }} {{ attributes.ctiy }}\n")
    broken = tmp_path / "broken.txt"
    broken.write_text("Hello\n\n{% if name %}oops\n")
    capsys.readouterr()

    assert spoold(conf, "templates", "add", "bad", "--subject", "Hi {{ email }}", "--text",
                  str(bad)) == 65
    err = capsys.readouterr().err
    assert "text, line 3: unknown placeholder 'nmae'" in err
    assert "text, line 3: unknown attribute 'ctiy' (known: city)" in err
    assert spoold(conf, "templates", "add", "broken", "--subject", "{{ name", "--text",
                  str(broken)) == 65
    err = capsys.readouterr().err
    assert "subject, line 1: " in err and "text, line 3: " in err

    assert spoold(conf, "templates", "add", "news", "--subject", "Hi {{ name }}", "--text",
                  str(good)) == 0
    assert spoold(conf, "templates", "edit", "news", "--text", str(bad)) == 65
    capsys.readouterr()
    assert spoold(conf, "templates", "preview", "news", "--contact", "ann@a.example") == 0
    out = capsys.readouterr().out
    assert "\r\nSubject: Hi Ann\r\n" in out and "\r\n\r\nHello Ann of Paris\r\n" in out
    assert "List-Unsubscribe-Post: List-Unsubscribe=One-Click" in out


def test_mailout_create_refuses_bad_input(conf, tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text("Hi\n")
    spoold(conf, "templates", "add", "t", "--subject", "S", "--text", str(text))
    capsys.readouterr()
    cases = [
        (["--template", "t", "--where", "city = Paris and"], 64,
         "filter: expected a field name (letters, digits, _) at character 17, found the end"),
        (["--template", "t", "--all", "--list", "x"], 1, "choose the recipients with one of"),
        (["--template", "t", "--all", "--send-at", "tomorrow"], 1, "--send-at 'tomorrow': use"),
        (["--template", "t", "--all", "--rate", "0/h"], 1, "--rate '0/h'"),
        (["--template", "t", "--list", "nope"], 67, "no list 'nope'"),
        (["--template", "t", "--all", "--from", "News <news@shop.example>\r\nBcc: x@y.z"], 65,
         "contains a control character"),
        (["--template", "t", "--all", "--send-at", "+2h", "--expires-at", "+1h"], 1,
         "expire before it is sent"),
    ]
    for args, status, message in cases:
        assert spoold(conf, "mailout", "create", *args) == status, args
        assert message in capsys.readouterr().err
