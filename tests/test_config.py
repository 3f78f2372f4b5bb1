"""Settings: the shipped file, defaults, and refusals that name file, key and reason."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from spoold import config
from spoold.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def test_shipped_file_is_the_documented_defaults():
    assert (ROOT / "etc" / "spoold.toml").read_text() == config.render_defaults()


def test_shipped_file_loads_to_the_defaults():
    loaded = config.load(ROOT / "etc" / "spoold.toml")
    for setting in config.SETTINGS:
        expected = config._validate(setting, setting.default)
        assert loaded.value(setting.section, setting.key) == expected


@pytest.mark.parametrize("text, message", [
    ("[runner]\nmax_children = \"ten\"\n", "runner.max_children: expected an integer"),
    ("[runner]\nmax_kids = 3\n", "unknown key runner.max_kids"),
    ("[runnr]\n", "unknown section [runnr]"),
    ("[runner]\nmax_children = 0\n", "runner.max_children: must be at least 1"),
    ("[smtp]\ntls = \"sometimes\"\n", "smtp.tls: must be one of none, may, encrypt"),
    ("[runner]\nmax_lifetime = \"5 weeks\"\n", "runner.max_lifetime: expected seconds"),
    ("[database]\nurl = \"postgres://x/y\"\n", "database.url: must start with"),
    ("[runner]\nbackoff_min = 100\nbackoff_max = 10\n", "backoff_max: must not be below"),
    ("[runner\n", "Expected ']'"),
    ("[smtp.tls_policy]\n\"example.org\" = \"strict\"\n",
     "smtp.tls_policy: example.org: 'strict' is not one of none, may, encrypt, verify"),
    ("[smtp]\ntls_policy = {\"bad_name.org\" = \"verify\"}\n",
     "smtp.tls_policy: 'bad_name.org' is not a domain name"),
    ("[smtp]\ntls_policy = \"verify\"\n", "smtp.tls_policy: expected a table, got str"),
    ("[dkim.domains.\"example.org\"]\nselector = \"s1\"\n",
     "dkim.domains: example.org: expected a table with selector and key_file"),
    ("[dkim.domains.\"example.org\"]\nselector = \"s 1\"\nkey_file = \"k\"\n",
     "dkim.domains: example.org: selector 's 1' is not a DNS label"),
    ("[dkim]\nheaders = [\"From\", \"Received\"]\n", "dkim.headers: Received must not be signed"),
])
def test_bad_values_are_refused_with_file_key_and_reason(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        config.load(path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_durations_accept_units(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[runner]\nmax_lifetime = "2d"\nbackoff_min = "90s"\nbackoff_max = "1h"\n')
    loaded = config.load(path)
    assert (loaded.runner.max_lifetime, loaded.runner.backoff_min,
            loaded.runner.backoff_max) == (172800, 90, 3600)


def test_relative_sqlite_path_is_relative_to_the_file(tmp_path):
    from spoold.store import store_for

    path = tmp_path / "c.toml"
    path.write_text('[database]\nurl = "sqlite://data/q.db"\n')
    store_for(config.load(path)).close()
    assert (tmp_path / "data" / "q.db").exists()


def test_cli_reports_a_bad_config_in_one_line(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[runner]\nmax_use = -1\n")
    proc = subprocess.run([sys.executable, "-m", "spoold.cli", "--config", str(path), "status"],
                          capture_output=True, text=True)
    assert proc.returncode == 78
    assert proc.stderr.strip() == f"spoold: {path}: runner.max_use: must be at least 1"


def test_config_show_hides_the_database_password(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[database]\nurl = "mysql://spool:s3cret@db.example/q"\n')
    text = config.render_effective(config.load(path))
    assert "s3cret" not in text and "mysql://spool:***@db.example/q" in text


def test_table_settings_take_either_toml_form_and_show_as_loadable_toml(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[smtp]\ntls_policy = {"Bank.Example" = "verify"}\n'
                    '[dkim.domains."example.org"]\nselector = "s1"\nkey_file = "keys/s1.key"\n')
    loaded = config.load(path)
    assert loaded.smtp.tls_policy == {"bank.example": "verify"}
    assert loaded.dkim.domains == {"example.org": {"selector": "s1", "key_file": "keys/s1.key"}}
    shown = tmp_path / "shown.toml"
    shown.write_text(config.render_effective(loaded))
    again = config.load(shown)
    assert (again.smtp.tls_policy, again.dkim.domains) == (loaded.smtp.tls_policy,
                                                           loaded.dkim.domains)
