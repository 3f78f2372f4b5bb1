"""spoold: a mail spooler daemon.

Applications enqueue mail with ``spoold.enqueue(...)`` (or the ``spoold
enqueue`` command, or SMTP submission); one queue runner per host
(``spoold run``) delivers it straight to each recipient domain's MX through a
capped pool of sender children and logs every attempt.  See README.md and
etc/spoold.toml.
"""

from spoold.enqueue import EnqueueResult, enqueue
from spoold.errors import SpooldError

__all__ = ["EnqueueResult", "SpooldError", "enqueue"]
