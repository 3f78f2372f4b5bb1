"""The database schema, as numbered migrations written once for both dialects.

Each migration is a list of statements with {placeholders} that each backend
fills with its own column types (see ``TYPES`` in sqlite.py and mysql.py).
``Store.upgrade()`` applies the ones newer than the version recorded in the
``schema_version`` table, in order.  Append a migration to change the schema;
never edit one that has shipped.

Tables
    message      raw RFC 5322 bytes of mail submitted whole, shared by its rows
    notify       the queue: one row per recipient (state queued/active/held)
    delivery     the log: one row per attempt (sent/deferred/bounced/expired/deleted)
    suppression  addresses never to mail again, with the reply that caused it
                 (cause: the bounce reason; notify_id: the delivery it came from)
    runner       one row per running queue runner: pid, heartbeat, children busy and
                 alive, backlog, counters and latency sums since it started
                 (spoold/stats.py)
    soft_bounce  consecutive soft bounces per address since its last delivery
    destination_flag  destinations that refused us on policy (blocklist,
                 reputation, authentication...): for the operator and for
                 traffic shaping
    destination_shaping  per shaping key (a rule's name, or a throttled
                 domain): the rate tokens left and when they were counted,
                 and the throttle state (factor of the limits in force,
                 paused_until, the reply that throttled it) -- spoold/shaping.py
    destination_slot  connections each runner holds per shaping key, under a
                 lease that its runner renews (a dead runner's run out)
"""

MIGRATIONS: list[list[str]] = [
    [
        """CREATE TABLE message (
            id {serial},
            sender VARCHAR(320) NOT NULL,
            body {blob} NOT NULL,
            size INTEGER NOT NULL,
            created_at {real} NOT NULL
        ){table}""",
        """CREATE TABLE notify (
            id {serial},
            message_id BIGINT NOT NULL,
            sender VARCHAR(320) NOT NULL,
            recipient VARCHAR(320) NOT NULL,
            domain VARCHAR(255) NOT NULL,
            priority INTEGER NOT NULL,
            state VARCHAR(8) NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            created_at {real} NOT NULL,
            not_before {real} NOT NULL,
            expires_at {real} NOT NULL,
            lease_owner VARCHAR(255),
            lease_until {real},
            last_code INTEGER,
            last_dsn VARCHAR(16),
            last_reply {text}
        ){table}""",
        "CREATE INDEX notify_due ON notify (state, priority, not_before)",
        "CREATE INDEX notify_lease ON notify (lease_owner, state)",
        "CREATE INDEX notify_domain ON notify (domain)",
        "CREATE INDEX notify_message ON notify (message_id)",
        """CREATE TABLE delivery (
            id {serial},
            notify_id BIGINT NOT NULL,
            message_id BIGINT NOT NULL,
            sender VARCHAR(320) NOT NULL,
            recipient VARCHAR(320) NOT NULL,
            domain VARCHAR(255) NOT NULL,
            status VARCHAR(10) NOT NULL,
            code INTEGER,
            dsn VARCHAR(16),
            reply {text},
            relay VARCHAR(300),
            delay {real} NOT NULL,
            attempt INTEGER NOT NULL,
            at {real} NOT NULL
        ){table}""",
        "CREATE INDEX delivery_at ON delivery (at)",
        "CREATE INDEX delivery_recipient ON delivery (recipient)",
        "CREATE INDEX delivery_notify ON delivery (notify_id)",
        """CREATE TABLE suppression (
            address VARCHAR(320) NOT NULL PRIMARY KEY,
            reason VARCHAR(32) NOT NULL,
            dsn VARCHAR(16),
            reply {text},
            created_at {real} NOT NULL
        ){table}""",
        """CREATE TABLE runner (
            owner VARCHAR(255) NOT NULL PRIMARY KEY,
            host VARCHAR(255) NOT NULL,
            pid INTEGER NOT NULL,
            started_at {real} NOT NULL,
            heartbeat_at {real} NOT NULL,
            children INTEGER NOT NULL,
            max_children INTEGER NOT NULL
        ){table}""",
    ],
    [
        # The runner's figures for spoold status and /metrics (spoold/stats.py):
        # gauges of the moment, then counters since started_at.
        "ALTER TABLE runner ADD COLUMN busy_children INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE runner ADD COLUMN backlog INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE runner ADD COLUMN results_waiting INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE runner ADD COLUMN sent BIGINT NOT NULL DEFAULT 0",
        "ALTER TABLE runner ADD COLUMN deferred BIGINT NOT NULL DEFAULT 0",
        "ALTER TABLE runner ADD COLUMN bounced BIGINT NOT NULL DEFAULT 0",
        "ALTER TABLE runner ADD COLUMN expired BIGINT NOT NULL DEFAULT 0",
        "ALTER TABLE runner ADD COLUMN claims BIGINT NOT NULL DEFAULT 0",
        "ALTER TABLE runner ADD COLUMN claim_seconds {real} NOT NULL DEFAULT 0",
        "ALTER TABLE runner ADD COLUMN claimed BIGINT NOT NULL DEFAULT 0",
        "ALTER TABLE runner ADD COLUMN dispatched BIGINT NOT NULL DEFAULT 0",
        "ALTER TABLE runner ADD COLUMN dispatch_seconds {real} NOT NULL DEFAULT 0",
        "ALTER TABLE runner ADD COLUMN writes BIGINT NOT NULL DEFAULT 0",
        "ALTER TABLE runner ADD COLUMN write_seconds {real} NOT NULL DEFAULT 0",
        "ALTER TABLE runner ADD COLUMN latency_buckets {text}",
    ],
    [
        "ALTER TABLE suppression ADD COLUMN notify_id BIGINT",
        "ALTER TABLE suppression ADD COLUMN cause VARCHAR(32)",
        """CREATE TABLE soft_bounce (
            address VARCHAR(320) NOT NULL PRIMARY KEY,
            bounces INTEGER NOT NULL,
            first_at {real} NOT NULL,
            last_at {real} NOT NULL,
            last_dsn VARCHAR(16),
            last_reply {text},
            notify_id BIGINT
        ){table}""",
        """CREATE TABLE destination_flag (
            domain VARCHAR(255) NOT NULL PRIMARY KEY,
            cause VARCHAR(32) NOT NULL,
            dsn VARCHAR(16),
            reply {text},
            relay VARCHAR(300),
            hits INTEGER NOT NULL,
            first_at {real} NOT NULL,
            last_at {real} NOT NULL,
            notify_id BIGINT
        ){table}""",
    ],
    [
        """CREATE TABLE destination_shaping (
            name VARCHAR(255) NOT NULL PRIMARY KEY,
            tokens {real} NOT NULL,
            filled_at {real} NOT NULL,
            factor {real} NOT NULL,
            paused_until {real} NOT NULL,
            throttles INTEGER NOT NULL,
            throttled_at {real},
            cause VARCHAR(32),
            reply {text},
            relay VARCHAR(300)
        ){table}""",
        """CREATE TABLE destination_slot (
            name VARCHAR(255) NOT NULL,
            owner VARCHAR(255) NOT NULL,
            slots INTEGER NOT NULL,
            lease_until {real} NOT NULL,
            PRIMARY KEY (name, owner)
        ){table}""",
    ],
]

LATEST = len(MIGRATIONS)
