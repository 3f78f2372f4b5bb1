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
    runner       one row per running queue runner: pid, heartbeat, children

Migration 2: notify.agent_failures, how many times the delivery agent died,
hung or failed while it had the row (outcome.py holds a row after a few).
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
        "ALTER TABLE notify ADD COLUMN agent_failures INTEGER NOT NULL DEFAULT 0",
    ],
]

LATEST = len(MIGRATIONS)
