"""``Store``: every query spoold makes, one mixin per concern over a backend.

Add a concern as a mixin module beside this one and list it here; backends
(sqlite.py, mysql.py) subclass ``Store``.
"""

from __future__ import annotations

from spoold.store.admin import AdminOps
from spoold.store.bounces import BounceOps
from spoold.store.mailouts import MailoutOps
from spoold.store.shaping import ShapingOps
from spoold.store.stats import StatsOps
from spoold.store.users import UserOps


class Store(AdminOps, BounceOps, MailoutOps, ShapingOps, StatsOps, UserOps):
    """Queue, log, suppression, operator, bounce, contact, mailout, traffic shaping,
    statistics and web UI user operations over one database connection."""
