"""What happens to a queue row after an attempt: the runner's retry policy.

A child reports sent, deferred or bounced for each recipient; this module
decides what that means for the row (DESIGN.md, "Queue row life"):

- sent                      -> leaves the queue, logged sent
- bounced                   -> leaves the queue, logged bounced; the address is
                               suppressed when the failure is about the address
                               itself (spoold.bounces.classify: hard)
- deferred                  -> queued again after a backoff that doubles per
                               attempt from backoff_min to backoff_max, never
                               later than the row's expiry
- deferred at or past expiry -> leaves the queue, logged expired
- child lost (died, hung, garbage) -> deferred with dsn 4.3.0, same backoff
- agent failure number max_agent_failures on one row (the child was lost
  while it had the row, or reported its own 4.3.0 error for it) -> logged
  deferred, but the row is held with the reason as its last reply: a poison
  message that kills its child every time stops costing children and
  attempts, and an operator sees why (spoold queue; release retries it)

Every failure also carries its verdict (spoold.bounces.classify), which the
store applies with the outcome: hard suppresses, soft counts towards
bounces.soft_limit (a sent resets it), policy flags the destination domain.

Settings: runner.backoff_min, runner.backoff_max, runner.max_agent_failures
(the row's expires_at was fixed at enqueue from runner.max_lifetime).
"""

from __future__ import annotations

from sender.protocol import Result
from sender.trouble import AGENT_ERROR
from spoold.bounces.classify import classify
from spoold.store import Attempt, QueueRow


def backoff(attempts: int, minimum: float, maximum: float) -> float:
    """Delay before the next try after ``attempts`` failed attempts (>= 1)."""
    return min(maximum, minimum * 2 ** max(0, attempts - 1))


def judged(attempt: Attempt) -> Attempt:
    """The attempt with its bounce verdict; a hard bounce suppresses its address."""
    if attempt.status in ("sent", "deleted"):
        return attempt
    verdict = classify(attempt.dsn or "", attempt.reply or "")
    attempt.kind, attempt.cause = verdict.kind, verdict.reason
    attempt.suppress = attempt.status == "bounced" and verdict.suppresses
    return attempt


def deferral(row: QueueRow, code: int | None, dsn: str, reply: str, relay: str, now: float,
             minimum: float, maximum: float) -> Attempt:
    """A temporary failure: retry later, or expire when the row's time is up."""
    if now >= row.expires_at:
        return judged(Attempt(row, "expired", code, dsn, reply, relay))
    due = min(now + backoff(row.attempts + 1, minimum, maximum), row.expires_at)
    return judged(Attempt(row, "deferred", code, dsn, reply, relay, not_before=due))


def agent_failed(attempt: Attempt, limit: int) -> Attempt:
    """Count a delivery agent failure on the row; hold it at the ``limit``-th (0: never)."""
    if attempt.status != "deferred":
        return attempt
    attempt.agent_failure = True
    failures = attempt.row.agent_failures + 1
    if limit and failures >= limit:
        attempt.hold = True
        attempt.reply = f"held after {failures} delivery agent failures: {attempt.reply}"
    return attempt


def from_result(row: QueueRow, result: Result, now: float, minimum: float,
                maximum: float, max_agent_failures: int = 0) -> Attempt:
    if result.status == "deferred":
        attempt = deferral(row, result.code, result.dsn, result.reply, result.relay, now,
                           minimum, maximum)
        if result.dsn == AGENT_ERROR and result.code is None:  # the child's own failure
            return agent_failed(attempt, max_agent_failures)
        return attempt
    return judged(Attempt(row, result.status, result.code, result.dsn, result.reply,
                          result.relay))


def lost(row: QueueRow, why: str, now: float, minimum: float, maximum: float,
         max_agent_failures: int = 0) -> Attempt:
    """The child handling the row died, hung or spoke garbage before answering."""
    return agent_failed(deferral(row, None, AGENT_ERROR, why, "none", now, minimum, maximum),
                        max_agent_failures)


def expired_unsent(row: QueueRow) -> Attempt:
    """A row found past its expiry when claimed: give up without trying again."""
    reply = row.last_reply or "expired before delivery was attempted"
    return judged(Attempt(row, "expired", row.last_code, row.last_dsn or "4.4.7", reply, "none"))
