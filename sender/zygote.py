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
    is the datagram "spawn" carrying, as SCM_RIGHTS, the stdin and stdout of
    one or more children (pipe ends the runner made; ZYGOTE_BATCH children
    at most) and optionally, last, the runner's children.journal
    (spoold/journal.py).  The answer is the children's pids in ASCII,
    separated by spaces, in the order of their pipes (fewer if a fork
    failed), or "error: TEXT".  Each child is a grandchild: the zygote
    forks an intermediate process that forks the children and exits, so
    that they are re-parented to the runner, a child subreaper
    (PR_SET_CHILD_SUBREAPER): the runner reaps its children and reads
    their exit status itself, signals pids that cannot have been recycled
    under it, and a child dies with the runner (PR_SET_PDEATHSIG, see
    sender.lifeline), not with the zygote; a child waits for that adoption
    before it serves.  A batch costs one intermediate process: the runner
    asks for as many children as it has destinations waiting.

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
import time
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
from sender.protocol import JOURNAL_FD, ZYGOTE_BATCH, ZYGOTE_SPAWN

TITLE = "spoold zygote"
_PR_SET_PDEATHSIG = 1
_EX_SOFTWARE = 70


def _become_sender(stdin: int, stdout: int, journal: int, runner: int, adoption: int
                   ) -> NoReturn:
    """In a child of the intermediate process: its pipes as fds 0 and 1, the journal
    as fd 3; once adopted by the runner, serve jobs."""
    code = _EX_SOFTWARE
    try:
        os.dup2(stdin, 0)
        os.dup2(stdout, 1)
        keep = 3
        if journal >= 0:
            os.dup2(journal, JOURNAL_FD)  # SenderConfig.journal_fd says so
            keep = JOURNAL_FD + 1
        _await_adoption(adoption, runner)
        os.closerange(keep, os.sysconf("SC_OPEN_MAX"))  # the zygote's socket and pipes
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        setproctitle.setproctitle(sender.TITLE)
        code = sender.__main__.main(parent=runner)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else _EX_SOFTWARE
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stderr.flush()
        os._exit(code)


def _await_adoption(adoption: int, runner: int) -> None:
    """Wait, without spinning, until the intermediate process has exited: EOF on
    ``adoption``, a pipe only it writes to; then for the re-parenting that
    follows its exit by microseconds.  (sender.lifeline exits if the runner,
    not the intermediate, is gone by then.)"""
    os.read(adoption, 1)
    deadline = time.monotonic() + 1.0
    while os.getppid() not in (runner, 1) and time.monotonic() < deadline:
        time.sleep(0.0001)


def _spawn(fds: list[int], runner: int) -> bytes:
    """Fork a child on each pair of ``fds`` (stdin, stdout, ...[, journal]) through
    one intermediate process; the answer for the runner."""
    pairs = [fds[i:i + 2] for i in range(0, len(fds) - 1, 2)]
    journal = fds[-1] if len(fds) % 2 else -1
    if not pairs:
        return b"error: a spawn request carries a stdin and a stdout per child"
    report_r, report_w = os.pipe()
    try:
        middle = os.fork()
    except OSError as exc:
        os.close(report_r)
        os.close(report_w)
        return f"error: fork: {exc}".encode()
    if middle == 0:
        os.close(report_r)
        adoption, adopted = os.pipe()  # EOF for the children when we have exited
        born = []
        try:
            for stdin, stdout in pairs:
                pid = os.fork()
                if pid == 0:
                    os.close(report_w)
                    os.close(adopted)
                    _become_sender(stdin, stdout, journal, runner, adoption)
                born.append(str(pid))
            answer = " ".join(born)
        except OSError as exc:  # the children forked so far are answered, in order
            answer = " ".join(born) or f"error: fork: {exc}"
        os.write(report_w, answer.encode())
        os._exit(0)
    os.close(report_w)
    with open(report_r, "rb") as report:
        return report.read() or b"error: the intermediate process died"


def _reap() -> None:
    """Collect the intermediate processes that have exited (their CPU time counts
    in ours, then in the runner's)."""
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass


def serve(control: socket.socket, runner: int) -> int:
    """Answer spawn requests until the runner closes ``control``."""
    while True:
        message, fds, _, _ = socket.recv_fds(control, 64, 2 * ZYGOTE_BATCH + 1)
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
