"""The renderer the sender child runs, and the protocol that carries mailouts to it."""

from __future__ import annotations

import dataclasses
import email
import email.policy
import json
import subprocess
import sys
from pathlib import Path

import pytest

from sender.protocol import (Job, Mailing, Message, Personal, ProtocolError, Recipient,
                             SenderConfig, decode_job, encode_config, encode_job)
from sender.render import RENDER_FAILED, check_template, render_job, render_message

ROOT = Path(__file__).resolve().parent.parent
MAILING = Mailing(sender="Shop <news@shop.example>", subject="Hi {{ name }}",
                  text="Dear {{ name }} of {{ attributes.city }}\n",
                  html="<p>{{ name }} &amp; {{ attributes.city }}</p>",
                  unsubscribe_url="https://shop.example/u/{token}",
                  unsubscribe_mailto="")


def personal(name: str = "Ann", **attributes: str) -> Personal:
    return Personal({"email": "ann@a.example", "name": name,
                     "attributes": {"city": "Paris", **attributes}}, "1.2.tok")


def mailout_job(domain: str, *people: tuple[int, str, Personal]) -> Job:
    return Job(5, domain, [Message("news@shop.example", b"", [Recipient(rid, to)], mailing="9",
                                   personal=p) for rid, to, p in people],
               mailings={"9": MAILING})


def test_job_with_mailings_round_trips():
    job = mailout_job("a.example", (1, "ann@a.example", personal()))
    job.messages.append(Message("x@shop.example", b"raw\r\n", [Recipient(2, "b@a.example")]))
    assert decode_job(encode_job(job)) == job


def test_message_without_its_mailing_is_refused():
    line = json.loads(encode_job(mailout_job("a.example", (1, "ann@a.example", personal()))))
    del line["mailings"]
    with pytest.raises(ProtocolError, match="without its mailing"):
        decode_job(json.dumps(line).encode())


def test_html_is_escaped_and_text_is_not():
    msg = email.message_from_bytes(render_message(MAILING, personal("<Ann & Co>"),
                                                  "ann@a.example"),
                                   policy=email.policy.default)
    assert msg.get_body(("plain",)).get_content().startswith("Dear <Ann & Co> of Paris")
    assert "<p>&lt;Ann &amp; Co&gt; &amp; Paris</p>" in msg.get_body(("html",)).get_content()
    assert msg["List-Unsubscribe"] == "<https://shop.example/u/1.2.tok>"


def test_a_copy_that_cannot_render_fails_alone():
    job = mailout_job("a.example", (1, "ann@a.example", personal()),
                      (2, "bob@a.example", Personal({"email": "bob@a.example", "name": "Bob",
                                                     "attributes": {}}, "t")))
    rendered, failed = render_job(job)
    assert [m.recipients[0].id for m in rendered.messages] == [1]
    assert rendered.messages[0].data.startswith(b"From: Shop <news@shop.example>\r\n")
    assert failed == [(2, "template error: UndefinedError: 'dict object' has no attribute "
                          "'city'")]


def test_the_sandbox_keeps_templates_out_of_python():
    hostile = dataclasses.replace(MAILING,
                                  text="{{ name.__class__.__mro__[1].__subclasses__() }}")
    job = Job(1, "a.example", [Message("n@shop.example", b"", [Recipient(1, "ann@a.example")],
                                       mailing="1", personal=personal())], {"1": hostile})
    _, failed = render_job(job)
    assert failed and "SecurityError" in failed[0][1]


def test_check_template_reports_lines():
    assert check_template("Hi {{ name }}", "a\n{{ email }}\n{{ attributes['city'] }}", None,
                          {"city"}) == []
    assert check_template("Hi", "a\nb\n{{ phone }}", "<p>\n{% endif %}", set()) == [
        "text, line 3: unknown placeholder 'phone' (use email, name, attributes, "
        "unsubscribe_url)",
        "html, line 2: Encountered unknown tag 'endif'."]


def test_child_renders_delivers_and_bounces_what_it_cannot_render(world):
    world.add_domain("a.example")
    config = SenderConfig(helo_name="spoold.test", port=world.port,
                          dns_nameservers=world.nameservers, dns_port=world.dns.port, tls="none",
                          connect_timeout=2, dns_timeout=2)
    job = mailout_job("a.example", (1, "ann@a.example", personal()),
                      (2, "bob@a.example", Personal({"email": "bob@a.example", "name": "Bob",
                                                     "attributes": {}}, "t")))
    proc = subprocess.run([sys.executable, "-m", "sender"], cwd=ROOT, timeout=30,
                          input=encode_config(config) + encode_job(job), capture_output=True)
    answers = {a.get("id", "done"): a for a in map(json.loads, proc.stdout.splitlines())}
    assert answers[1]["status"] == "sent"
    assert (answers[2]["status"], answers[2]["dsn"], answers[2]["relay"]) == \
        ("bounced", RENDER_FAILED, "none")
    assert answers["done"]["done"] == 5
    [received] = world.all_messages()
    assert received.rcpt_tos == ["ann@a.example"] and b"Dear Ann of Paris" in received.data
