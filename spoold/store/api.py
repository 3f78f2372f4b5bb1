"""``Store``: every query spoold makes, one mixin per concern over a backend.

Add a concern as a mixin module beside this one and list it here; backends
(sqlite.py, mysql.py) subclass ``Store``.
"""

from __future__ import annotations

from spoold.store.admin import AdminOps
from spoold.store.bounces import BounceOps
from spoold.store.shaping import ShapingOps


class Store(AdminOps, BounceOps, ShapingOps):
    """Queue, log, suppression, traffic shaping and operator operations over one database
    connection."""
