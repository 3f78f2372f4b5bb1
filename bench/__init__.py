"""spoold against Postfix on one machine, side by side, in one run.

NAME
    bench - the benchmark that decides spoold's design choices

SYNOPSIS
    bench/run.sh [--runs 3] [--messages 20000] [--quick] [--only S1,S4]

DESCRIPTION
    Starts a fleet of Postfix ``smtp-sink`` MX hosts on 127.0.2.x, a DNS
    server for spoold (spoold.fakenet), and a private Postfix instance that
    relays to the same sinks through ``transport_maps`` with DNS disabled.
    Each scenario runs for spoold and for Postfix alternately, several
    times, and the figures are reported as medians with min-max and as
    ratios measured in the same run, since only ratios survive a shared
    machine.  Every process the benchmark starts is stopped by PID at the
    end, whatever happens.

FILES
    procs.py      process bookkeeping: start, stop by PID, CPU and memory
    net.py        the sinks and the DNS zone both spoolers deliver to
    postfix.py    the private Postfix instance and its injection
    spool.py      a spoold instance and its injection (bench/inject.py)
    scenarios.py  the six scenarios
    report.py     the table, docs/BENCHMARKS.md and its chart
"""
