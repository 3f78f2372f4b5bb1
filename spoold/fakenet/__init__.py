"""A fake internet on loopback: a DNS server and scriptable SMTP sinks.

Used by ``spoold demo``, the test suite and the benchmarks so that the whole
delivery path (MX lookup, SMTP dialogue) runs against real servers without
any traffic leaving 127.0.0.0/8.  ``World`` is the usual entry point.
"""

from spoold.fakenet.nameserver import DNSServer
from spoold.fakenet.pki import TestCA
from spoold.fakenet.sink import Behaviour, Received, Sink, SinkPool
from spoold.fakenet.web import PolicyServer
from spoold.fakenet.world import World

__all__ = ["Behaviour", "DNSServer", "PolicyServer", "Received", "Sink", "SinkPool", "TestCA",
           "World"]
