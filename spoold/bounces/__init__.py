"""Bounces: what a failed delivery means for its recipient and its destination.

    classify.py   one verdict (hard, soft, policy, complaint, none) for an SMTP
                  reply or a DSN/ARF recipient: used by the runner and the
                  bounce receiver alike
    report.py     parse a bounce or complaint message: RFC 3464 DSNs, RFC 5965
                  ARF reports, Amazon SES notifications, and (plaintext.py) the
                  non-standard texts of qmail, Exim, Exchange, Yahoo, ...
    verp.py       the VERP envelope sender that names its queue row
    receiver.py   the aiosmtpd listener that takes bounces for the bounce domain
"""
