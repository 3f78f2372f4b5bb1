"""NAME
    sender.zygote - the clean process that spoold's sender children are forked from

SUMMARY
    python -m sender.zygote RUNNER_PID     (started by spoold's pool; not for people)

DESCRIPTION
    A new sender child must cost a fork, not a Python start-up (190 ms of
    CPU each, bench/), but a fork of the runner itself would copy the
    runner's memory into every child: the database password in the
    settings, the URL and the database driver's buffers (four copies, read
    from a child's /proc/PID/mem).  So the runner starts this program once,
    with an exec: a fresh interpreter that imports the sender's modules,
    freezes them out of the garbage collector (gc.freeze, so that children
    share its pages) and then only forks.  It never sees a setting, a
    database connection or a message: what a child needs comes later, from
    the runner, down the child's own pipe (its config line, then jobs).

    Its stdin is a UNIX SOCK_SEQPACKET socket to the runner.  Each request
    is the datagram "spawn" carrying, as SCM_RIGHTS, the child's stdin and
    stdout (pipe ends the runner made) and optionally the runner's
    children.journal (spoold/journal.py).  The answer is the child's pid in
    ASCII, or "error: TEXT".  The child is a grandchild: the zygote forks
    an intermediate process that forks the child and exits at once, so
    that the child is re-parented to the runner, which is a child subreaper
    (PR_SET_CHILD_SUBREAPER): the runner reaps its children and reads
    their exit status itself, signals a pid that cannot have been recycled
    under it, and a child dies with the runner (PR_SET_PDEATHSIG, see
    sender.lifeline), not with the zygote.  The answer is sent once the
    intermediate process has exited, when the child's parent is the runner.

    The zygote ignores SIGINT and SIGHUP (they are the runner's), and exits
    when the runner closes the socket or dies (PR_SET_PDEATHSIG, SIGKILL).

DIAGNOSTICS
    A request it cannot serve (no pipe ends, a failed fork) gets "error:
    ..."; anything else it meets goes to stderr, which it shares with the
    runner, and it exits non-zero; the runner's pool starts another one.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import socket
import sys
import traceback
from typing import NoReturn

import setproctitle

import sender
import sender.__main__
import sender.client  # imported here so that every child has them: see above
import sender.mx
import sender.render
import sender.signing  # (dkimpy, cryptography: 30 ms a child that signs would pay)
import sender.tlspolicy
from sender.lifeline import prctl
from sender.protocol import JOURNAL_FD, ZYGOTE_SPAWN

TITLE = "spoold zygote"
_PR_SET_PDEATHSIG = 1
_EX_SOFTWARE = 70


def _become_sender(stdin: int, stdout: int, journal: int, runner: int, middle: int
                   ) -> NoReturn:
    """In the child of the intermediate process ``middle``: its pipes as fds 0
    and 1, the journal as fd 3, then serve jobs."""
    code = _EX_SOFTWARE
    try:
        os.dup2(stdin, 0)
        os.dup2(stdout, 1)
        keep = 3
        if journal >= 0:
            os.dup2(journal, JOURNAL_FD)  # SenderConfig.journal_fd says so
            keep = JOURNAL_FD + 1
        os.closerange(keep, os.sysconf("SC_OPEN_MAX"))  # the zygote's socket and pipes
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        setproctitle.setproctitle(sender.TITLE)
        code = sender.__main__.main(parent=runner, adopted_from=middle)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else _EX_SOFTWARE
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stderr.flush()
        os._exit(code)


def _spawn(fds: list[int], runner: int) -> bytes:
    """Fork a child on ``fds`` (stdin, stdout[, journal]) through an intermediate
    process; the answer for the runner."""
    if len(fds) not in (2, 3):
        return b"error: a spawn request carries 2 or 3 file descriptors, not %d" % len(fds)
    report_r, report_w = os.pipe()
    try:
        middle = os.fork()
    except OSError as exc:
        os.close(report_r)
        os.close(report_w)
        return f"error: fork: {exc}".encode()
    if middle == 0:
        os.close(report_r)
        try:
            middle = os.getpid()
            pid = os.fork()
            if pid == 0:
                os.close(report_w)
                _become_sender(fds[0], fds[1], fds[2] if len(fds) == 3 else -1, runner, middle)
            os.write(report_w, str(pid).encode())
        except OSError as exc:
            os.write(report_w, f"error: fork: {exc}".encode())
        os._exit(0)
    os.close(report_w)
    try:
        # One write; not waiting for the intermediate process to exit saves a
        # millisecond: the child waits for its adoption by the runner itself.
        answer = os.read(report_r, 256)
    finally:
        os.close(report_r)
    return answer or b"error: the intermediate process died"


def _reap() -> None:
    """Collect the intermediate processes that have exited (their CPU time counts
    in ours, then in the runner's)."""
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass


def serve(control: socket.socket, runner: int) -> int:
    """Answer spawn requests until the runner closes ``control``."""
    while True:
        message, fds, _, _ = socket.recv_fds(control, 64, 3)
        try:
            if not message and not fds:
                return 0
            _reap()
            answer = _spawn(fds, runner) if message == ZYGOTE_SPAWN else b"error: unknown request"
        finally:
            for fd in fds:
                os.close(fd)
        control.send(answer)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    runner = int(args[0]) if args and args[0].isdigit() else 0
    if not runner:
        print("usage: python -m sender.zygote RUNNER_PID (started by spoold run)",
              file=sys.stderr)
        return 64
    prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != runner:
        return 0  # the runner died before the line above
    for signum in (signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    setproctitle.setproctitle(TITLE)
    control = socket.socket(fileno=0)
    # Frozen objects are skipped by the collector: a child's garbage
    # collections then leave the zygote's pages shared instead of writing to
    # every object they scan (copy-on-write).
    gc.freeze()
    return serve(control, runner)


if __name__ == "__main__":
    sys.exit(main())
