"""The database schema, as numbered migrations written once for both dialects.

Each migration is a list of statements with {placeholders} that each backend
fills with its own column types (see ``types`` in sqlite.py and mysql.py); a
statement the two dialects cannot share is a {"sqlite": ..., "mysql": ...}
pair (``Backend.dialect`` picks one).
``Store.upgrade()`` applies the ones newer than the version recorded in the
``schema_version`` table, in order.  Append a migration to change the schema;
never edit one that has shipped.

Tables
    message      raw RFC 5322 bytes of mail submitted whole, shared by its rows
    notify       the queue: one row per recipient (state queued/active/held)
    delivery     the log: one row per attempt (sent/deferred/bounced/expired/deleted)
    suppression  addresses never to mail again, with the reply that caused it
    runner       one row per running queue runner: pid, heartbeat, children

Rollups of the delivery log, kept by the transaction that logs each attempt
(``QueueOps._tally``), so counters and charts never scan the log itself:
    delivery_minute      attempts per minute (epoch seconds, UTC) and status
    delivery_domain_day  attempts per UTC day, destination domain and status
    delivery_total       attempts per status since the log began

The web UI's own tables:
    webui_user   people who may log in: name, role (admin|viewer), Argon2 hash
    webui_token  API tokens, stored as SHA-256 digests, each for one user
    webui_state  small named values, e.g. the generated session signing key
"""

# Refills the rollups from the log: run by the migration that added them, and
# by ``StatsOps.rebuild_rollups`` (the web UI bench fills the log directly).
# Migration 2 uses these statements: change them only together with a new
# migration that redoes the fill.
ROLLUPS = ("delivery_minute", "delivery_domain_day", "delivery_total")
ROLLUP_FILL = [
    "INSERT INTO delivery_minute (minute, status, n) SELECT FLOOR(at / 60) * 60, status, "
    "COUNT(*) FROM delivery GROUP BY 1, 2",
    "INSERT INTO delivery_domain_day (day, domain, status, n) SELECT FLOOR(at / 86400) * "
    "86400, domain, status, COUNT(*) FROM delivery GROUP BY 1, 2, 3",
    "INSERT INTO delivery_total (status, n) SELECT status, COUNT(*) FROM delivery "
    "GROUP BY status",
]

MIGRATIONS: list[list[str | dict[str, str]]] = [
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
        """CREATE TABLE delivery_minute (
            minute BIGINT NOT NULL,
            status VARCHAR(10) NOT NULL,
            n BIGINT NOT NULL,
            PRIMARY KEY (minute, status)
        ){table}""",
        """CREATE TABLE delivery_domain_day (
            day BIGINT NOT NULL,
            domain VARCHAR(255) NOT NULL,
            status VARCHAR(10) NOT NULL,
            n BIGINT NOT NULL,
            PRIMARY KEY (day, domain, status)
        ){table}""",
        """CREATE TABLE delivery_total (
            status VARCHAR(10) NOT NULL PRIMARY KEY,
            n BIGINT NOT NULL
        ){table}""",
        *ROLLUP_FILL,
        # Keyset pages of the queue filtered by state or recipient, and the
        # last error per destination domain, without scanning the tables.
        "CREATE INDEX notify_state ON notify (state, id)",
        # The claim's index, extended by attempts so that it covers counting the
        # deferred rows; attempts only changes along with not_before, so the
        # runner's updates move no more index entries than before.
        {"sqlite": "DROP INDEX notify_due", "mysql": "DROP INDEX notify_due ON notify"},
        "CREATE INDEX notify_due ON notify (state, priority, not_before, attempts)",
        "CREATE INDEX notify_recipient ON notify (recipient)",
        "CREATE INDEX delivery_domain ON delivery (domain, status, id)",
        """CREATE TABLE webui_user (
            id {serial},
            name VARCHAR(64) NOT NULL UNIQUE,
            role VARCHAR(8) NOT NULL,
            password_hash VARCHAR(255) NOT NULL,
            created_at {real} NOT NULL,
            password_changed_at {real} NOT NULL,
            last_login_at {real}
        ){table}""",
        """CREATE TABLE webui_token (
            digest CHAR(64) NOT NULL PRIMARY KEY,
            user_id BIGINT NOT NULL,
            created_at {real} NOT NULL
        ){table}""",
        "CREATE INDEX webui_token_user ON webui_token (user_id)",
        """CREATE TABLE webui_state (
            name VARCHAR(64) NOT NULL PRIMARY KEY,
            value {text} NOT NULL
        ){table}""",
    ],
]

LATEST = len(MIGRATIONS)
