"""Deliverability end to end: DKIM, per-destination TLS policy, MTA-STS, TLS in the log.

Real parts only: the daemon (``spoold run --drain``) delivers through the
fakenet DNS server to aiosmtpd sinks that offer STARTTLS with certificates
from a throw-away CA (fakenet.pki); MTA-STS policies are served over HTTPS on
loopback; DKIM signatures are checked by Perl's Mail::DKIM (Debian's
libmail-dkim-perl), an implementation independent of the dkimpy that signs,
against the public keys the DNS server publishes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import spoold
from sender.mtasts import MtaSts, mx_matches, parse_policy, parse_txt
from sender.mx import MxResolver
from sender.protocol import SenderConfig
from spoold.fakenet import Behaviour, TestCA

ROOT = Path(__file__).resolve().parent.parent
VERIFIER = ROOT / "tests" / "tools" / "dkim_verify.pl"
# Deferred rows stay deferred for the rest of a test: one attempt each per drain.
ONE_TRY = {"backoff_min": 60, "backoff_max": 60}


@pytest.fixture(scope="module")
def ca(tmp_path_factory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def perl_dkim() -> None:
    probe = subprocess.run(["perl", "-MMail::DKIM::Verifier", "-MNet::DNS", "-e", "1"],
                           capture_output=True)
    if probe.returncode != 0:
        reason = "Perl's Mail::DKIM is missing (apt-get install libmail-dkim-perl)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


def _drain(spool) -> dict[str, dict]:
    """Run the daemon until nothing is due; its delivery events by recipient."""
    proc = spool.drain()
    assert proc.returncode == 0, proc.stderr.decode()
    events = {}
    for line in proc.stderr.decode().splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == "delivery":
            events[event["to"]] = event
    return events


def _send(spool, recipient: str, sender: str = "news@sender.test") -> None:
    spoold.enqueue(sender=sender, recipients=[recipient], subject="Hello", body="hi\n",
                   config=spool.config)


# --- DKIM -----------------------------------------------------------------------


def _keygen(directory: Path, domain: str, selector: str, *options: str) -> tuple[str, dict]:
    """``spoold dkim keygen``: the TXT record it prints and the config entry it prints."""
    env = {k: v for k, v in os.environ.items() if k != "SPOOLD_CONFIG"}
    proc = subprocess.run([sys.executable, "-m", "spoold.cli", "dkim", "keygen", domain,
                           selector, "--dir", str(directory), *options],
                          capture_output=True, text=True, env=env, check=True)
    zone_line = next(line for line in proc.stdout.splitlines() if " IN TXT " in line)
    assert zone_line.startswith(f"{selector}._domainkey.{domain}. IN TXT (")
    txt = "".join(re.findall(r'"([^"]*)"', zone_line))
    config_text = proc.stdout[proc.stdout.index("[dkim.domains"):]
    entry = tomllib.loads(config_text)["dkim"]["domains"][domain]
    return txt, entry


def _verify(world, data: bytes) -> subprocess.CompletedProcess:
    return subprocess.run(["perl", str(VERIFIER), world.dns.host, str(world.dns.port)],
                          input=data, capture_output=True, timeout=30)


def test_dkim_signatures_verify_with_an_independent_verifier(world, spool_factory, tmp_path,
                                                             perl_dkim):
    keys = tmp_path / "keys"
    txt, entry = _keygen(keys, "sender.test", "s2024")
    key_file = Path(entry["key_file"])
    assert key_file.stat().st_mode & 0o777 == 0o600
    world.dns.set("s2024._domainkey.sender.test", {"TXT": [txt]})
    broken = tmp_path / "broken.key"
    broken.write_text("-----BEGIN PRIVATE KEY-----\nc2VjcmV0IGtleSBtYXRlcmlhbA==\n"
                      "-----END PRIVATE KEY-----\n")
    world.add_domain("inbox.test")
    spool = spool_factory(runner=ONE_TRY, dkim={"domains": {
        "sender.test": entry, "broken.test": {"selector": "s1", "key_file": str(broken)}}})

    _send(spool, "plain@inbox.test")
    bulk = (b"From: News <news@Sender.Test>\r\nTo: list@inbox.test\r\nSubject: Offers\r\n"
            b"List-Unsubscribe: <https://sender.test/u/1>\r\n"
            b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
            b"X-Not-Signed: 1\r\n\r\n" + b"body line\r\n.leading dot\r\n" * 50)
    spoold.enqueue(bulk, recipients=["list@inbox.test"], config=spool.config)
    _send(spool, "other@inbox.test", sender="someone@unsigned.test")
    _send(spool, "bad@inbox.test", sender="x@broken.test")
    events = _drain(spool)

    received = {m.rcpt_tos[0]: m.data for m in world.sinks_for("inbox.test")[0].messages}
    assert sorted(received) == ["list@inbox.test", "other@inbox.test", "plain@inbox.test"]
    for recipient in ("plain@inbox.test", "list@inbox.test"):
        verdict = _verify(world, received[recipient])
        assert verdict.returncode == 0, verdict.stdout.decode() + verdict.stderr.decode()
        assert verdict.stdout.decode().startswith("pass d=sender.test s=s2024 a=rsa-sha256 ")
    signed = _verify(world, received["list@inbox.test"]).stdout.decode()
    assert "h=from:to:subject:date:message-id:list-unsubscribe:list-unsubscribe-post\n" in signed
    assert b"DKIM-Signature" not in received["other@inbox.test"]  # no key: unsigned

    bad = events["bad@inbox.test"]
    assert (bad["status"], bad["dsn"]) == ("deferred", "4.3.5")
    assert str(broken) in bad["reply"] and "not a PEM private key" in bad["reply"]
    shown = spool.cli("config", "--show").stdout.decode()
    secrets = [key_file.read_text().splitlines()[1], "c2VjcmV0IGtleSBtYXRlcmlhbA"]
    for text in (json.dumps(events), shown):
        assert not any(secret in text for secret in secrets)


def test_dkim_keygen_ed25519_signs_ed25519_sha256(world, tmp_path):
    # Debian 12's Mail::DKIM predates ed25519-sha256, so dkimpy's own verifier
    # checks this one, with the key the keygen printed, served by the DNS server.
    import dkim
    import dns.resolver

    from sender.signing import Signer

    txt, entry = _keygen(tmp_path, "ed.test", "e1", "--ed25519")
    assert txt.startswith("v=DKIM1; k=ed25519; p=")
    world.dns.set("e1._domainkey.ed.test", {"TXT": [txt]})
    signer = Signer(SenderConfig(dkim_domains={"ed.test": entry}, dkim_headers=["From"]))
    signed = signer.sign(b"From: a@ed.test\r\nSubject: x\r\n\r\nbody\r\n")
    assert b"a=ed25519-sha256" in signed

    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers, resolver.port = [world.dns.host], world.dns.port

    def txt_lookup(name: bytes, timeout: float = 5) -> bytes:
        answer = resolver.resolve(name.decode().rstrip("."), "TXT")
        return b"".join(answer.rrset[0].strings)

    assert dkim.verify(signed, dnsfunc=txt_lookup)


def test_dkim_keygen_refuses_to_overwrite_and_names_bad_input(tmp_path):
    _keygen(tmp_path, "sender.test", "s1")
    env = {k: v for k, v in os.environ.items() if k != "SPOOLD_CONFIG"}
    for args, status, message in (
            (["sender.test", "s1"], 73, "exists; not overwriting a key"),
            (["sender_test", "s1"], 64, "'sender_test' is not a domain name"),
            (["sender.test", "s9", "--bits", "512"], 64, "1024 to 8192 bits")):
        proc = subprocess.run([sys.executable, "-m", "spoold.cli", "dkim", "keygen", *args,
                               "--dir", str(tmp_path)], capture_output=True, text=True, env=env)
        assert proc.returncode == status and message in proc.stderr


# --- TLS policy -------------------------------------------------------------------


def test_tls_policy_per_destination(world, spool_factory, tmp_path, ca):
    untrusted = TestCA(tmp_path / "other-ca", name="not trusted")
    world.add_domain("plain.test")  # no STARTTLS
    world.add_domain("good.test", Behaviour(tls_context=ca.server_context("mx1.good.test")))
    world.add_domain("wrongname.test", Behaviour(tls_context=ca.server_context("mx.other.test")))
    world.add_domain("untrusted.test",
                     Behaviour(tls_context=untrusted.server_context("mx1.untrusted.test")))
    world.add_domain("may.test", Behaviour(tls_context=untrusted.server_context("x.test")))
    world.add_domain("sub.bank.test", Behaviour(tls_context=ca.server_context("x.test")))
    spool = spool_factory(runner=ONE_TRY, smtp={
        "tls": "may", "tls_ca_file": str(ca.ca_file),
        "tls_policy": {"plain.test": "encrypt", "good.test": "verify",
                       "wrongname.test": "verify", "untrusted.test": "verify",
                       ".bank.test": "verify"}})
    for recipient in ("a@plain.test", "b@good.test", "c@wrongname.test", "d@untrusted.test",
                      "e@may.test", "f@sub.bank.test"):
        _send(spool, recipient)
    events = _drain(spool)

    outcome = {to: (e["status"], e["dsn"]) for to, e in events.items()}
    assert outcome == {"a@plain.test": ("deferred", "4.7.4"), "b@good.test": ("sent", "2.0.0"),
                       "c@wrongname.test": ("deferred", "4.7.5"),
                       "d@untrusted.test": ("deferred", "4.7.5"),
                       "e@may.test": ("sent", "2.0.0"), "f@sub.bank.test": ("deferred", "4.7.5")}
    assert "TLS is required, but was not offered" in events["a@plain.test"]["reply"]
    assert "Server certificate not verified" in events["c@wrongname.test"]["reply"]
    assert "Hostname mismatch" in events["c@wrongname.test"]["reply"]
    assert "Server certificate not verified" in events["d@untrusted.test"]["reply"]
    assert "unable to get local issuer" in events["d@untrusted.test"]["reply"]
    for domain in ("plain.test", "wrongname.test", "untrusted.test", "sub.bank.test"):
        assert world.sinks_for(domain)[0].messages == []

    good = events["b@good.test"]
    assert good["tls"] in ("TLSv1.2", "TLSv1.3") and good["cipher"] not in ("", "none")
    assert good["tls_policy"] == "verify (smtp.tls_policy)"
    assert world.sinks_for("good.test")[0].messages[0].tls == good["tls"]
    may = events["e@may.test"]  # opportunistic: encrypted, certificate not checked
    assert may["tls"] != "none" and may["tls_policy"] == "may (smtp.tls)"
    assert (events["a@plain.test"]["tls"], events["a@plain.test"]["cipher"]) == ("none", "none")


def test_a_kept_plaintext_connection_is_not_reused_where_tls_is_required(world):
    from sender.client import SessionCache, deliver
    from sender.protocol import Job, Message, Recipient
    from sender.tlspolicy import Policies

    sink = world.add_domain("shared.test")[0]  # no STARTTLS
    world.dns.set("strict.test", {"MX": [(10, "mx1.shared.test")]})
    config = SenderConfig(port=world.port, dns_nameservers=world.nameservers,
                          dns_port=world.dns.port, tls="may", connection_cache_time=30,
                          tls_policy={"strict.test": "encrypt"})
    resolver, cache = MxResolver(config), SessionCache(config)
    policies, results = Policies(config, resolver), []
    for number, domain in enumerate(("shared.test", "strict.test", "shared.test")):
        job = Job(number, domain, [Message("a@sender.test", b"Subject: x\r\n\r\nx\r\n",
                                           [Recipient(number, f"x@{domain}")])])
        deliver(job, config, resolver, results.append, cache, policies.for_domain(domain))
    cache.close()

    assert [(r.status, r.dsn) for r in results] == [("sent", "2.0.0"), ("deferred", "4.7.4"),
                                                    ("sent", "2.0.0")]
    assert sink.sessions == 3  # the plaintext session was not offered to strict.test


def test_a_verified_connection_is_not_reused_for_another_mx_name_at_its_address(world, ca):
    from sender.client import SessionCache, deliver
    from sender.protocol import Job, Message, Recipient
    from sender.tlspolicy import Policies

    context = ca.server_context("mx1.good.test")
    sink = world.add_domain("good.test", Behaviour(tls_context=context))[0]
    world.dns.set("other.test", {"MX": [(10, "mx.other.test")]})
    world.dns.set("mx.other.test", {"A": [sink.host]})  # same server, a name its cert lacks
    config = SenderConfig(port=world.port, dns_nameservers=world.nameservers,
                          dns_port=world.dns.port, tls="verify", tls_ca_file=str(ca.ca_file),
                          connection_cache_time=30)
    resolver, cache = MxResolver(config), SessionCache(config)
    policies, results = Policies(config, resolver), []
    for number, domain in enumerate(("good.test", "other.test")):
        job = Job(number, domain, [Message("a@sender.test", b"Subject: x\r\n\r\nx\r\n",
                                           [Recipient(number, f"x@{domain}")])])
        deliver(job, config, resolver, results.append, cache, policies.for_domain(domain))
    cache.close()

    assert [(r.status, r.dsn) for r in results] == [("sent", "2.0.0"), ("deferred", "4.7.5")]
    assert "Hostname mismatch" in results[1].reply  # a session of its own, checked for its name
    assert len(sink.messages) == 1


# --- MTA-STS --------------------------------------------------------------------------


def _policy(mode: str, *mx: str, max_age: int = 86400) -> str:
    return "version: STSv1\r\nmode: " + mode + "\r\n" + "".join(f"mx: {m}\r\n" for m in mx) + \
        f"max_age: {max_age}\r\n"


def test_mta_sts_enforce_delivers_only_to_matching_mx_over_verified_tls(world, spool_factory,
                                                                      tmp_path, ca):
    untrusted = TestCA(tmp_path / "other-ca", name="not trusted")
    for domain, mx_pattern, issuer in (("match.test", "*.match.test", ca),
                                       ("elsewhere.test", "mx.other.test", ca),
                                       ("badcert.test", "mx1.badcert.test", untrusted),
                                       ("testing.test", "mx.other.test", ca)):
        world.add_domain(domain, Behaviour(tls_context=issuer.server_context(f"mx1.{domain}")))
        mode = "testing" if domain == "testing.test" else "enforce"
        world.add_mta_sts(domain, _policy(mode, mx_pattern), ca)
    world.add_domain("nopolicy.test")
    world.dns.set("_mta-sts.nopolicy.test", {"TXT": ["v=STSv1; id=7;"]})  # no server at all
    spool = spool_factory(runner=ONE_TRY, smtp={"tls": "may", "tls_ca_file": str(ca.ca_file)},
                          mta_sts={"port": world.https_port, "timeout": 2})
    for recipient in ("a@match.test", "b@elsewhere.test", "c@badcert.test", "d@testing.test",
                      "e@nopolicy.test"):
        _send(spool, recipient)
    events = _drain(spool)

    outcome = {to: (e["status"], e["dsn"]) for to, e in events.items()}
    assert outcome == {"a@match.test": ("sent", "2.0.0"),
                       "b@elsewhere.test": ("deferred", "4.7.0"),
                       "c@badcert.test": ("deferred", "4.7.5"),
                       "d@testing.test": ("sent", "2.0.0"),
                       "e@nopolicy.test": ("sent", "2.0.0")}
    assert events["a@match.test"]["tls_policy"] == "verify (mta-sts)"
    assert events["a@match.test"]["tls"] != "none"
    assert "does not match the MTA-STS policy of elsewhere.test" in \
        events["b@elsewhere.test"]["reply"]
    assert world.sinks_for("elsewhere.test")[0].messages == []
    assert world.sinks_for("badcert.test")[0].messages == []
    assert "MTA-STS testing: MX host mx1.testing.test is not in the policy" in \
        events["d@testing.test"]["tls_policy"]
    # A policy that cannot be fetched, with none cached: the normal policy (RFC 8461 5.1).
    assert events["e@nopolicy.test"]["tls_policy"].startswith("may (smtp.tls); MTA-STS policy "
                                                              "fetch failed")


def test_mta_sts_policy_is_cached_by_id_and_kept_when_the_server_fails(world, tmp_path, ca):
    server = world.add_mta_sts("cache.test", _policy("enforce", "mx1.cache.test"), ca)
    config = SenderConfig(dns_nameservers=world.nameservers, dns_port=world.dns.port,
                          tls_ca_file=str(ca.ca_file), mta_sts=True,
                          mta_sts_cache_dir=str(tmp_path / "sts"),
                          mta_sts_port=world.https_port, mta_sts_timeout=2)
    sts = MtaSts(config, MxResolver(config))

    policy, problem = sts.lookup("cache.test")
    assert (policy.mode, policy.mx, problem, server.fetches) == ("enforce", ("mx1.cache.test",),
                                                                 "", 1)
    assert sts.lookup("cache.test")[0] == policy and server.fetches == 1

    # Another child (a new instance) finds it on disk, under the same id.
    other = MtaSts(config, MxResolver(config))
    assert other.lookup("cache.test")[0] == policy and server.fetches == 1

    # A new id is fetched again; when that fails, the cached policy still holds.
    server.policies.clear()
    world.dns.set("_mta-sts.cache.test", {"TXT": ["v=STSv1; id=2;"]})
    fresh = MtaSts(config, MxResolver(config))
    policy_now, problem = fresh.lookup("cache.test")
    assert policy_now == policy and "HTTP 404" in problem

    # An expired policy is fetched again (max_age 0: expired at once).
    server.policies["mta-sts.cache.test"] = _policy("enforce", "mx1.cache.test", max_age=0)
    memory_only = MtaSts(dataclasses.replace(config, mta_sts_cache_dir=""), MxResolver(config))
    assert memory_only.lookup("cache.test")[0].max_age == 0
    fetches = server.fetches
    memory_only.lookup("cache.test")
    assert server.fetches == fetches + 1


def test_mta_sts_policy_server_must_have_a_trusted_certificate(world, tmp_path, ca):
    untrusted = TestCA(tmp_path / "other-ca", name="not trusted")
    server = world.add_mta_sts("forged.test", _policy("enforce", "mx.evil.test"), untrusted)
    config = SenderConfig(dns_nameservers=world.nameservers, dns_port=world.dns.port,
                          tls_ca_file=str(ca.ca_file), mta_sts=True,
                          mta_sts_port=world.https_port, mta_sts_timeout=2)

    policy, problem = MtaSts(config, MxResolver(config)).lookup("forged.test")

    assert policy is None and server.fetches == 0
    assert "policy fetch failed" in problem and "certificate verify failed" in problem


def test_mta_sts_parsing():
    assert parse_txt(["v=STSv1; id=20240101T000000;", "v=spf1 -all"]) == "20240101T000000"
    assert parse_txt(["v=STSv1; id=1;", "v=STSv1; id=2;"]) is None  # two records: none
    assert parse_txt(["v=STSv1; id=not-alnum;"]) is None
    policy = parse_policy("version: STSv1\nmode: enforce\nmx: mail.example.com\n"
                          "mx: *.example.net\nmax_age: 604800\n", "example.com", "1", 0)
    assert policy.mx == ("mail.example.com", "*.example.net") and policy.max_age == 604800
    assert mx_matches("a.example.net", policy.mx) and mx_matches("MAIL.example.com.", policy.mx)
    assert not mx_matches("a.b.example.net", policy.mx) and not mx_matches("example.net",
                                                                           policy.mx)
    with pytest.raises(Exception, match="max_age"):
        parse_policy("version: STSv1\nmode: enforce\nmx: a\nmax_age: 99999999999\n", "d", "1", 0)
    with pytest.raises(Exception, match="no mx"):
        parse_policy("version: STSv1\nmode: enforce\nmax_age: 60\n", "d", "1", 0)
