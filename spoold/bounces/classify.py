"""Bounce classification: what one failure says about the address and the destination.

NAME
    classify - one verdict for a synchronous SMTP reply or an asynchronous DSN

DESCRIPTION
    ``classify(status, text)`` reads an RFC 3463 enhanced status code and the
    words of the reply or DSN diagnostic and returns a ``Verdict``: a reason
    (named like the reasons of sisimai, the best-known bounce analyser:
    userunknown, mailboxfull, blocked, ...) and one of four kinds, each with
    its consequence:

    hard       the address or its domain is dead (no such user or mailbox,
               no such domain, null MX, mailbox moved): suppress at once.
    soft       the address may work later (mailbox full, suspended account,
               message expired, system or network trouble, a recipient's own
               filter): counted; only a run of them over days suppresses
               (bounces.soft_limit, bounces.soft_days), and a success resets
               the run.
    policy     the destination refuses *us*, not the recipient: blocklists,
               reputation, spam or content filters, SPF/DKIM/DMARC, reverse
               DNS, relaying, our sender address, rate limits.  Never
               suppresses; flags the destination domain for the operator and
               for traffic shaping.
    complaint  a feedback-loop report (ARF abuse, fraud, opt-out): suppress.

    The words decide first, because servers put the same code on different
    failures (a 5.1.1 "mailbox full", a 5.7.1 "no such user"); the code
    decides when no phrase is recognised.  Words of an unknown user are hard
    only with proof (an address code, a refusal of RCPT TO, or the reporting
    system's own verdict), else soft; a failure that is only temporary
    (4.x.x) is never hard.  Pure functions, no I/O.

    Public: Verdict, classify, classify_feedback, HARD, SOFT, POLICY,
    COMPLAINT, NONE.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

HARD = "hard"
SOFT = "soft"
POLICY = "policy"
COMPLAINT = "complaint"
NONE = "none"  # not a failure at all (delivered, relayed, an auto-reply)


@dataclass(frozen=True)
class Verdict:
    kind: str  # hard | soft | policy | complaint | none
    reason: str  # userunknown, mailboxfull, blocked, feedback, ...

    @property
    def suppresses(self) -> bool:
        """Whether this failure alone takes the address off every list."""
        return self.kind in (HARD, COMPLAINT)


# Phrases per reason, in the order they are tried: the first reason whose
# phrases occur in the text wins.  Phrases about our sender, our host or our
# content come before the address phrases, because refusals often quote the
# recipient's address ("<bob@x>: Recipient address rejected: blocked using
# zen.spamhaus.org"); quota and suspension come before "unknown user" for the
# same reason ("user over quota").
_PHRASES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("mailboxfull", SOFT, (
        r"mail ?box (is )?full", r"mailbox (size|storage)", r"over ?quota", r"quota exceeded",
        r"exceeded (the )?(storage|quota)", r"quota (limit|violation)", r"storage (quota|limit)",
        r"(disk|mailbox) quota", r"insufficient (disk|system)? ?(space|storage)",
        r"not enough (disk |storage )?space", r"user is over", r"full mailbox",
        r"mailbox has exceeded", r"is over (the |its )?(quota|limit|allowed)", r"\bquota\b",
        r"too much mail", r"mail box space", r"account is full", r"inbox is full",
        r"exceeds? (the )?mailbox", r"is full\b")),
    ("norelaying", POLICY, (
        r"relay(ing)? (access )?(denied|not permitted|prohibited|not allowed|refused)",
        r"(not permitted|unable|not allowed|cannot|can't|do not|don't) (to )?relay",
        r"no relaying", r"not a gateway", r"relaying (is )?(denied|disallowed)",
        r"relay not (permitted|authori[sz]ed)", r"open relay")),
    ("authfailure", POLICY, (
        r"\bspf\b", r"\bdkim\b", r"\bdmarc\b", r"sender policy framework",
        r"unauthenticated (e-?mail|message|sender)", r"authentication (check|failure|failed)",
        r"not authori[sz]ed to send (on behalf|from|as)", r"designate[ds]? .* permitted sender",
        r"is not a permitted sender", r"dkim.* fail", r"failed (the )?(sender )?authenticat")),
    ("requireptr", POLICY, (
        r"reverse (dns|lookup|ip|hostname)", r"\bptr\b", r"\brdns\b", r"no reverse",
        r"(cannot|can't|unable to|could not|couldn't) (find|resolve|determine) (your |the )?"
        r"(host ?name|ip|address|client)",
        r"(host ?name|ip address) (does not|doesn't) (resolve|match)", r"dns ?(lookup )?mismatch",
        r"not have (a )?(valid )?reverse", r"unresolvable (host|address)",
        r"(client|ip|host) (name )?(is )?not (resolv|match)", r"generic (hostname|rdns)",
        r"dynamic (ip|address|host)", r"dial[- ]?up")),
    ("rejected", POLICY, (
        r"sender (address )?(rejected|refused|denied|blocked|unknown|verify failed|not allowed)",
        r"(domain|address) of sender", r"sender (domain|address) (does not exist|must|is)",
        r"bad sender", r"invalid sender", r"sender verification",
        r"mail from .* (rejected|refused)",
        r"(rejected|refused|blocked) (the )?sender", r"return path", r"null sender",
        r"envelope sender", r"from address", r"your (e-?mail )?address .* (blocked|rejected)",
        r"sender is (on|in) (a|the|my)", r"you are not allowed to (post|send)",
        r"not (allowed|permitted|authori[sz]ed) to (post|send) (to|mail to|messages to)")),
    ("badreputation", POLICY, (r"reputation", r"sender score", r"\bsenderscore\b")),
    ("blocked", POLICY, (
        r"block ?list", r"black ?list", r"\bblocked\b", r"\brbl\b", r"\bdnsbl\b", r"spamhaus",
        r"spamcop", r"sorbs", r"barracuda", r"\bcbl\b", r"(?<!not )listed (in|on|at|by)",
        r"(your|the|client|sending) (ip|host|server|network|domain|address)\b.{0,40}"
        r"(is |has been )?(listed|banned|rejected|refused|denied|not allowed|blocked)",
        r"(access|service) (denied|refused|rejected)", r"connection (denied|rejected)",
        r"banned", r"\bdenied\b",
        r"poor reputation", r"temporarily (deferred|rejected|blocked) due to",
        r"not accepting (mail|messages) from", r"refused to talk")),
    ("spamdetected", POLICY, (
        r"\bspam\b", r"junk", r"unsolicited", r"bulk (mail|e-?mail)", r"spam ?score",
        r"content (filter|rejected)", r"message (content|body) (rejected|refused|not accepted)",
        r"looks like (spam|junk)", r"suspicious", r"phish")),
    ("virusdetected", POLICY, (r"virus", r"malware", r"infected", r"dangerous attachment",
                               r"(attachment|file) type")),
    ("securityerror", POLICY, (
        r"\btls\b", r"starttls", r"encryption required", r"must (use|issue) a starttls",
        r"certificate", r"secur(e|ity) (connection|channel|policy|reasons)")),
    ("speeding", POLICY, (
        r"rate limit", r"too many (messages|recipients|mails|emails|connections|sessions)",
        r"too fast", r"throttl", r"exceeded (the )?(sending|message|rate|connection)",
        r"sending (rate|limit)", r"try (again )?later.{0,40}(rate|limit|volume)",
        r"(message|connection) rate", r"receiving mail at a rate", r"too many concurrent",
        r"unusual (rate|volume)", r"limit exceeded", r"temporarily limited")),
    ("policyviolation", POLICY, (
        r"\bpolicy\b", r"violat", r"prohibited", r"not permitted", r"not allowed",
        r"message (has been |was )?rejected", r"(header|content|message) (is )?not "
        r"(compliant|valid)", r"non-?compliant", r"syntax error in (header|message)",
        r"(duplicate|missing|invalid|malformed) (header|from|date|message-id)",
        r"message (body|headers?) (is )?(malformed|invalid)")),
    ("mesgtoobig", SOFT, (
        r"(message|mail|size) (is )?(too (big|large|long))", r"too (big|large) (message|mail)",
        r"message size", r"size (limit|exceeds)", r"exceeds? (the )?(maximum|max|size)",
        r"larger than", r"message length exceeds")),
    ("suspend", SOFT, (
        r"(account|mailbox|user|address|recipient) (has been |is |was )?(temporarily )?"
        r"(disabled|suspended|deactivated|inactive|frozen|locked|blocked)",
        r"(disabled|suspended|inactive|deactivated|closed) (account|mailbox|user)",
        r"account (has )?expired", r"not (currently )?active", r"\bsuspended\b",
        r"mailbox (is )?(closed|discontinued)", r"in(active|valid) due to inactivity",
        r"\bis (disabled|inactive|suspended|deactivated)\b", r"temporar(y|ily) locked",
        r"disabled (recipient|address|account|mailbox|user)")),
    ("hasmoved", HARD, (r"(has|was|have) moved", r"no longer (available|valid|in use|"
                                              r"used|exists|with|at|here|receiv|accept)",
                        r"is no longer")),
    ("notaccept", HARD, (
        r"null ?mx", r"(domain|host|server) (does not|doesn't|do not) accept (any )?mail",
        r"accepts? no mail", r"not accept(ing)? (any )?mail", r"no smtp service")),
    ("hostunknown", HARD, (
        r"host unknown", r"unknown host", r"(no such|unknown|invalid|bad|nonexistent|non-existent)"
        r" (domain|host|mail domain)", r"domain (not found|does not exist|doesn't exist|is not "
        r"valid|lookup failed|unknown)", r"host (or domain )?(name )?not found",
        r"name or service not known", r"unrouteable (mail )?(address|domain)", r"nxdomain",
        r"no (valid )?(mx|mail exchanger)( record)?s? (for|found)",
        r"(mx|mail exchanger) .*(non-?existent|does not exist)",
        r"all relevant mx records point to", r"domain (name )?(has )?no (mx|address)",
        r"host not found", r"domain .* does not exist", r"unknown (mail )?domain",
        r"no such (host|domain)", r"domain (is )?not reachable",
        r"(couldn't|could not|can't|cannot|unable to) find (any host|a mail exchanger)",
        r"illegal (host|domain)",
        r"\b[a-z0-9-]+(\.[a-z0-9-]+)*\.[a-z]{2,} (does not|doesn't) exist",
        r"not (a )?(known|valid|registered) domain",
        r"domain isn't in my list of allowed rcpthosts", r"not in my list of allowed rcpthosts",
        r"not a (hosted|local|accepted) domain")),
    ("userunknown", HARD, (
        r"(user|recipient|mailbox|address|account|addressee|alias|person|local ?part|name)"
        r"( name)? (is )?(unknown|not (found|known|recogni[sz]ed|valid|listed|exist|available)|"
        r"does ?n[o']t exist|invalid|doesn'?t exist|unavailable|unrecogni[sz]ed)",
        r"(unknown|invalid|bad|nonexistent|non-existent|illegal|unrecogni[sz]ed) "
        r"(user|recipient|mailbox|address|account|addressee|alias|local ?part|e-?mail)",
        r"no such (user|recipient|mailbox|address|account|person|local ?user|alias|one|e-?mail)",
        r"(no|not a) (valid )?(mailbox|account|user)( here| by that name)?",
        r"does not exist", r"doesn't exist", r"not exist", r"is not a valid",
        r"(not|isn't) (a )?(valid|known|registered|local) (user|recipient|mailbox|address)",
        r"address (not found|lookup failed)", r"undeliverable address", r"no mailbox",
        r"not our customer", r"bad destination", r"no valid recipients?",
        r"invalid (final delivery )?user ?id", r"(doesn't|does not) have an? .{0,30}account",
        r"user (not|doesn'?t) (here|exist)", r"unknown (or illegal )?(user|alias)",
        r"no (such )?user", r"not listed in", r"invalid (e-?mail )?address",
        r"mailbox (not|unavailable|does not)", r"user (unknown|not found)",
        r"email account that you tried to reach", r"no account by that name",
        r"not (a )?known user", r"not in (the )?(directory|address book|list of users)",
        r"vmailbox", r"virtual (mailbox|alias) table", r"local recipient table")),
    ("filtered", SOFT, (
        r"filtered", r"delivery (is )?not authori[sz]ed", r"recipient (refuses|refused)",
        r"(does not|doesn't) (wish|want) to receive", r"not accept(ing)? (mail|messages) from",
        r"refuse[sd]? to accept", r"mail (is )?not accepted", r"rejected by (the )?recipient")),
    ("expired", SOFT, (
        r"expired", r"retry time(out)? (not reached|exceeded)", r"too long", r"giving up",
        r"gave up", r"time(d)? ?out", r"could not be delivered (within|for|in)",
        r"delivery time", r"has been delayed", r"not (been )?delivered (for|in|within)",
        r"unable to deliver.{0,40}(days|hours)", r"undeliverable for", r"queue(d)? too long",
        r"maximum (time|lifetime)", r"retry (period|interval) exceeded")),
    ("networkerror", SOFT, (
        r"connection (refused|reset|timed out|lost|closed|dropped)", r"network",
        r"(host|server) (is )?unreachable", r"no route", r"unable to connect",
        r"could not connect", r"can't connect", r"mail loop", r"too many hops",
        r"loop(s)? (back|detected)", r"routing loop", r"lost connection", r"no answer",
        r"dns (error|failure|problem|lookup)", r"name server", r"temporary (lookup|dns)")),
    ("systemerror", SOFT, (
        r"system (error|failure|not available|problem)", r"temporar", r"try (again )?later",
        r"local (error|problem)", r"server (error|failure|busy)", r"i/o error", r"internal error",
        r"resources", r"service (not available|unavailable)", r"(out of|insufficient) memory",
        r"mailer error", r"error in processing", r"unable to (deliver|process)",
        r"cannot (process|deliver)", r"command (died|failed)", r"program",
        r"deferred", r"unknown error")),
)

_COMPILED = tuple((reason, kind, re.compile("|".join(f"(?:{p})" for p in phrases), re.I))
                  for reason, kind, phrases in _PHRASES)

# When no phrase is recognised, the code decides: first the full code, then
# class.subject.  5.1.0 and 5.5.x can be about either side: soft.
_BY_CODE = {
    "5.1.1": (HARD, "userunknown"), "5.1.2": (HARD, "hostunknown"),
    "5.1.3": (HARD, "userunknown"), "5.1.4": (HARD, "userunknown"),
    "5.1.6": (HARD, "hasmoved"), "5.1.10": (HARD, "notaccept"),
    "5.2.1": (HARD, "userunknown"),
    "5.1.7": (POLICY, "rejected"), "5.1.8": (POLICY, "rejected"),  # our sender
    "5.2.2": (SOFT, "mailboxfull"), "5.2.3": (SOFT, "mesgtoobig"),
    "5.3.4": (SOFT, "mesgtoobig"), "5.4.6": (SOFT, "networkerror"),
    "5.4.7": (SOFT, "expired"), "4.4.7": (SOFT, "expired"),
    "4.2.2": (SOFT, "mailboxfull"), "5.7.26": (POLICY, "authfailure"),
    "5.7.25": (POLICY, "requireptr"), "5.7.1": (POLICY, "blocked"),
}
_BY_SUBJECT = {
    "5.1": (SOFT, "undefined"), "5.2": (SOFT, "mailboxfull"), "5.3": (SOFT, "systemerror"),
    "5.4": (SOFT, "networkerror"), "5.5": (SOFT, "undefined"), "5.6": (POLICY, "contenterror"),
    "5.7": (POLICY, "securityerror"), "4.7": (POLICY, "blocked"),
    "4.4": (SOFT, "networkerror"), "4.2": (SOFT, "mailboxfull"), "4.3": (SOFT, "systemerror"),
}

# ARF (RFC 5965, 6591) feedback types: a complaint by the recipient, or a
# report about the sender's authentication or a virus that says nothing
# about whether the recipient wants the mail.
_COMPLAINTS = frozenset({"abuse", "fraud", "other", "opt-out", "opt-out-list", "complaint"})


# Addresses and links in a reply are not its words ("mailboxfull@example.org",
# ".../reason/#userunknown").
_NOISE = re.compile(r"\S+@\S+|\b(https?://|www\.)\S+", re.I)
# The SMTP command a refusal answered, as reports quote it: Postfix "(in reply
# to RCPT TO command)" and "Recipient address rejected", Exim "after RCPT
# TO:<x>", "after end of data", qmail "RCPT TO response".  (A Sendmail
# transcript's ">>> DATA" followed by a refusal proves nothing: with
# PIPELINING the RCPT replies come after it.)
_STAGES = (
    ("rcpt", r"(in reply to|after) rcpt\b|>>> ?rcpt to:?\s*<[^>]*>\s*<<< ?[45]\d\d|"
             r"rcpt to response|our rcpt to|smtp\W+(command\W+)?rcpt\b|\[rcpt_to\]|"
             r"recipient address rejected|(has )?rejected (the )?address"),
    ("mail", r"(in reply to|after) mail from\b|>>> ?mail from:?\s*<[^>]*>[^<]*<<< ?[45]\d\d"),
    ("data", r"(in reply to|after) (the )?end of data|smtp command\W+data\b|"
             r"(after|in reply to) data\b"),
)
_STAGE = re.compile("|".join(f"(?P<{name}>{pattern})" for name, pattern in _STAGES), re.I)


def _stage(text: str) -> str:
    """rcpt, mail or data: the command the first quoted refusal answered; "" unknown."""
    match = _STAGE.search(text)
    return match.lastgroup if match else ""


def _by_phrase(text: str) -> tuple[str, str] | None:
    for reason, kind, pattern in _COMPILED:
        if pattern.search(text):
            return kind, reason
    return None


def _by_code(status: str) -> tuple[str, str]:
    if status in _BY_CODE:
        return _BY_CODE[status]
    subject = ".".join(status.split(".")[:2])
    if subject in _BY_SUBJECT:
        return _BY_SUBJECT[subject]
    return SOFT, "undefined"


_REMOTE_REPLY = re.compile(r"(?<![\d.\-/#])(?<!\w:)[45]\d\d(?=[ \-,]|$)", re.M)
# A reply that names an address is the server's answer about that address
# ("550 <bob@x>... User unknown", "554 ... account (bob@x)").
_NAMING_REPLY = re.compile(r"(?<![\d.\-/#])[45]\d\d[ \-][^@\n]{0,80}?[^\s<>(@]+@[\w-]+(\.[\w-]+)+")
_SENDER_CODES = ("5.1.7", "5.1.8")


def _proven(status: str, stage: str, words: tuple[str, ...]) -> bool:
    """Whether words of an unknown or moved user prove the address dead.

    Not after the message data (the address was accepted at RCPT TO: a
    filter's pretext), nor under a code that says the mailbox exists (x.2.x
    but 5.2.1) or refuses on policy (x.7.x).  Otherwise proof is an address
    code, a refusal that answered RCPT TO or that names the address, or the
    reporting system's own verdict (no remote reply quoted); a remote's bare
    "550 unknown user" at an unknown stage may be a filter's and only counts
    as soft.
    """
    subject = status.split(".")[1:2]
    if stage == "data" or (subject in (["2"], ["7"]) and status != "5.2.1"):
        return False
    address_code = status == "5.2.1" or (status.startswith("5.1.") and
                                          status not in _SENDER_CODES)
    return (address_code or stage == "rcpt" or not any(map(_REMOTE_REPLY.search, words)) or
            any(map(_NAMING_REPLY.search, words)))


def classify(status: str, text: str = "", context: str = "") -> Verdict:
    """The verdict on one failed delivery.

    ``status`` is the RFC 3463 code ("5.1.1"; "" when none is known; a 2.x.x
    status is no failure), ``text`` the reply or DSN diagnostic and
    ``context`` other words about the same recipient (a bounce's prose),
    read when ``text`` names no known failure.

    Words of an unknown user need proof to be hard (see _proven): an
    address code, a refusal of RCPT TO, or the reporting system's own
    verdict; unproven ones are soft ("filtered": maybe a content filter).
    A refusal of MAIL FROM is about our sender (policy).  A 4.x.x failure is
    never hard.
    """
    if status.startswith("2"):
        return Verdict(NONE, "delivered")
    found = _by_phrase(_NOISE.sub(" ", text)) if text else None
    if found is None and context:
        found = _by_phrase(_NOISE.sub(" ", context))
    kind, reason = found or _by_code(status)
    stage = _stage(f"{text}\n{context}")
    if kind == HARD and stage == "mail":
        kind, reason = POLICY, "rejected"
    elif found and reason in ("userunknown", "hasmoved") and not _proven(status, stage,
                                                                         (text, context)):
        kind, reason = SOFT, "filtered"
    if kind == HARD and status.startswith("4"):
        kind = SOFT
    return Verdict(kind, reason)


def classify_feedback(feedback_type: str) -> Verdict:
    """The verdict on an ARF feedback report of this Feedback-Type."""
    kind = feedback_type.strip().lower()
    if kind in _COMPLAINTS:
        return Verdict(COMPLAINT, "feedback")
    if kind == "auth-failure":
        return Verdict(POLICY, "authfailure")
    return Verdict(NONE, "feedback")
