"""How a sender child dies with its runner: at once, unless a final dot is on the wire.

A runner killed with SIGKILL cannot tell its children; orphans that went on
delivering would send every row the next runner takes back a second time.
So a child asks Linux for SIGTERM when its parent dies (PR_SET_PDEATHSIG,
``arm``), and a SIGTERM ends it at once -- wherever it is, before any new
command or job -- with one exception: between the final dot of a message
and the result lines for its reply (``final_dot``).  There the server may
already have taken the message (RFC 1047), and a child that died now would
leave the row to be sent again by the next runner.  Told to stop inside
that window, the child waits for the reply at most ORPHAN_GRACE seconds
more (or what is left of data_done_timeout, if less), writes the results
to the runner's journal (fd 3, spoold/journal.py) -- the next runner waits
for that before it replays the journal -- and exits without starting
anything else.  A child without a journal has nowhere to leave its
results: it dies at once there too.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
from collections.abc import Iterator

ORPHAN_GRACE = 5.0
_PR_SET_PDEATHSIG = 1

_journal = False  # whether results outlive this process (the runner gave a journal)
_window = 0  # > 0 between a final dot and the results for its reply
_stopping = False  # SIGTERM came inside the window: exit once it closes


def prctl(option: int, value: int) -> None:
    if ctypes.CDLL(None, use_errno=True).prctl(option, value) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option}, {value})")


def arm(parent: int, journal: bool) -> None:
    """Die with ``parent`` (SIGTERM, handled as above); exit now if it is gone already.

    ``journal``: results are written to the runner's journal too, so a
    child told to stop in a final dot's window finishes reading its reply.
    """
    global _journal
    _journal = journal
    signal.signal(signal.SIGTERM, _on_term)
    prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:
        raise SystemExit(0)


def stopping() -> bool:
    """Told to stop, and finishing a final dot's reply: stdout may lead nowhere."""
    return _stopping


def _on_term(signum: int, frame: object) -> None:
    global _stopping
    if not (_window and _journal):
        _die()
    _stopping = True
    # The reply to the dot is awaited under the stage's interval timer
    # (sender.client); bring its end forward to the grace period.
    left = signal.getitimer(signal.ITIMER_REAL)[0]
    if not left or left > ORPHAN_GRACE:
        signal.setitimer(signal.ITIMER_REAL, ORPHAN_GRACE)


def _die() -> None:
    """Die of SIGTERM, as if it had no handler (the exit status says so)."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)
    os._exit(128 + signal.SIGTERM)  # not reached: the signal is delivered first


@contextlib.contextmanager
def final_dot() -> Iterator[None]:
    """The window from the final dot to the results for its reply (see above)."""
    global _window
    _window += 1
    try:
        yield
    finally:
        _window -= 1
        if _stopping and not _window:
            _die()
