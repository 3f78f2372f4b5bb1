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
                 (cause: the bounce reason; notify_id: the delivery it came from)
    runner       one row per running queue runner: pid, heartbeat, children busy and
                 alive, backlog, counters and latency sums since it started
                 (spoold/stats.py)
    soft_bounce  consecutive soft bounces per address since its last delivery
    destination_flag  destinations that refused us on policy (blocklist,
                 reputation, authentication...): for the operator and for
                 traffic shaping

Mailouts (migration 4; see spoold/mailout.py)
    contact            one row per address (email_key = lower-cased, unique),
                       name, attributes (a JSON object), unsubscribed_at
    contact_attribute  every attribute name any contact has had (templates
                       are checked against it)
    contact_list, list_member   named lists of contacts (many-to-many)
    template           name, subject, text body, optional HTML body (Jinja2)
    mailout            one send of a template to a selection of contacts:
                       status, send_at, expires_at, rate, priority, test
                       mode, expansion cursor and skip counters
    mailout_contact    the contacts of a mailout made with --contacts
    campaign, scenario a timeline on a list; each scenario becomes a mailout
    secret             generated secrets (the unsubscribe key when unset)
    notify.mailout_id, notify.contact_id   a mailout's queue rows: unique per
                       (mailout, contact); message_id is 0 (MAILOUT_MESSAGE),
                       the child renders the message from the template
    delivery.mailout_id                    per-mailout counters come from here

Rollups of the delivery log (migration 5), kept by the transaction that logs each attempt
(``QueueOps._tally``), so counters and charts never scan the log itself:
    delivery_minute      attempts per minute (epoch seconds, UTC) and status
    delivery_domain_day  attempts per UTC day, destination domain and status
    delivery_total       attempts per status since the log began

The web UI's own tables (migration 5):
    webui_user   people who may log in: name, role (admin|viewer), Argon2 hash
    webui_token  API tokens, stored as SHA-256 digests, each for one user

Migration 6: notify.agent_failures, how many times the delivery agent died,
hung or failed while it had the row (outcome.py holds a row after a few).

Traffic shaping (migration 7; spoold/shaping.py):
    destination_shaping  per shaping key (a rule's name, or a throttled
                 domain): the rate tokens left and when they were counted,
                 and the throttle state (factor of the limits in force,
                 paused_until, the reply that throttled it) -- spoold/shaping.py
    destination_slot  connections each runner holds per shaping key, under a
                 lease that its runner renews (a dead runner's run out)

Migration 9: delivery_dsn_total, logged attempts by the class and subject of
their enhanced status code ("5.1", "4.4", "5.7" ...), kept like the other
rollups: /metrics' deliveries by DSN class.

Migration 8 (the web UI's mailout pages):
    delivery_by_mailout  attempts per mailout and status, kept like the other
                         rollups (and by the removal of a cancelled mailout's
                         rows): a mailout's counters and progress never count
                         its log rows
    notify_mailout_id    index on notify (mailout_id, id): the queue filtered
                         by mailout, a page at a time
    notify_mailout_state index on notify (mailout_id, state, attempts): covers
                         counting a mailout's rows by state, so its page costs
                         an index range, not a read of each row (a state
                         change moves one more index entry: about 0.4 us a
                         row on SQLite)
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

# Refills delivery_by_mailout from the log: migration 8 and ``rebuild_rollups``.
MAILOUT_ROLLUP = "delivery_by_mailout"
MAILOUT_ROLLUP_FILL = (
    "INSERT INTO delivery_by_mailout (mailout_id, status, n) SELECT mailout_id, status, "
    "COUNT(*) FROM delivery WHERE mailout_id IS NOT NULL GROUP BY mailout_id, status")

# Refills delivery_dsn_total from the log: migration 9 and ``rebuild_rollups``.
# The class is the enhanced status code's class and subject ("5.1" of 5.1.1):
# address, mailbox, system, network, protocol, content or policy trouble.
DSN_ROLLUP = "delivery_dsn_total"
DSN_ROLLUP_FILL = (
    "INSERT INTO delivery_dsn_total (dsn_class, n) SELECT SUBSTR(dsn, 1, 3), COUNT(*) "
    "FROM delivery WHERE dsn IS NOT NULL AND dsn <> '' GROUP BY SUBSTR(dsn, 1, 3)")

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
        """CREATE TABLE contact (
            id {serial},
            email VARCHAR(320) NOT NULL,
            email_key VARCHAR(320) NOT NULL,
            domain VARCHAR(255) NOT NULL,
            name VARCHAR(255) NOT NULL DEFAULT '',
            attributes {text} NOT NULL,
            created_at {real} NOT NULL,
            updated_at {real} NOT NULL,
            unsubscribed_at {real}
        ){table}""",
        "CREATE UNIQUE INDEX contact_email ON contact (email_key)",
        """CREATE TABLE contact_attribute (
            name VARCHAR(191) NOT NULL PRIMARY KEY
        ){table}""",
        """CREATE TABLE contact_list (
            id {serial},
            name VARCHAR(191) NOT NULL,
            created_at {real} NOT NULL
        ){table}""",
        "CREATE UNIQUE INDEX contact_list_name ON contact_list (name)",
        """CREATE TABLE list_member (
            list_id BIGINT NOT NULL,
            contact_id BIGINT NOT NULL,
            PRIMARY KEY (list_id, contact_id)
        ){table}""",
        "CREATE INDEX list_member_contact ON list_member (contact_id)",
        """CREATE TABLE template (
            id {serial},
            name VARCHAR(191) NOT NULL,
            subject {text} NOT NULL,
            text_body {text} NOT NULL,
            html_body {text},
            created_at {real} NOT NULL,
            updated_at {real} NOT NULL
        ){table}""",
        "CREATE UNIQUE INDEX template_name ON template (name)",
        """CREATE TABLE mailout (
            id {serial},
            template_id BIGINT NOT NULL,
            sender VARCHAR(320) NOT NULL,
            selection VARCHAR(10) NOT NULL,
            list_id BIGINT,
            where_filter {text},
            status VARCHAR(10) NOT NULL,
            send_at {real} NOT NULL,
            expires_at {real} NOT NULL,
            rate INTEGER,
            priority INTEGER NOT NULL,
            test_to {text},
            test_contact_id BIGINT,
            campaign_id BIGINT,
            expand_cursor BIGINT NOT NULL DEFAULT 0,
            expand_until BIGINT,
            expanded BIGINT NOT NULL DEFAULT 0,
            skipped_unsubscribed BIGINT NOT NULL DEFAULT 0,
            skipped_suppressed BIGINT NOT NULL DEFAULT 0,
            unsubscribed BIGINT NOT NULL DEFAULT 0,
            created_at {real} NOT NULL,
            started_at {real},
            finished_at {real}
        ){table}""",
        "CREATE INDEX mailout_status ON mailout (status, send_at)",
        """CREATE TABLE mailout_contact (
            mailout_id BIGINT NOT NULL,
            contact_id BIGINT NOT NULL,
            PRIMARY KEY (mailout_id, contact_id)
        ){table}""",
        """CREATE TABLE campaign (
            id {serial},
            name VARCHAR(191) NOT NULL,
            list_id BIGINT NOT NULL,
            sender VARCHAR(320) NOT NULL,
            starts_at {real} NOT NULL,
            ends_at {real} NOT NULL,
            created_at {real} NOT NULL
        ){table}""",
        "CREATE UNIQUE INDEX campaign_name ON campaign (name)",
        """CREATE TABLE scenario (
            id {serial},
            campaign_id BIGINT NOT NULL,
            template_id BIGINT NOT NULL,
            at {real} NOT NULL,
            status VARCHAR(10) NOT NULL,
            mailout_id BIGINT
        ){table}""",
        "CREATE INDEX scenario_due ON scenario (status, at)",
        """CREATE TABLE secret (
            name VARCHAR(64) NOT NULL PRIMARY KEY,
            value VARCHAR(255) NOT NULL
        ){table}""",
        "ALTER TABLE notify ADD COLUMN mailout_id BIGINT",
        "ALTER TABLE notify ADD COLUMN contact_id BIGINT",
        "CREATE UNIQUE INDEX notify_mailout ON notify (mailout_id, contact_id)",
        "ALTER TABLE delivery ADD COLUMN mailout_id BIGINT",
        "CREATE INDEX delivery_mailout ON delivery (mailout_id, status)",
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
    ],
    [
        "ALTER TABLE notify ADD COLUMN agent_failures INTEGER NOT NULL DEFAULT 0",
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
    [
        """CREATE TABLE delivery_by_mailout (
            mailout_id BIGINT NOT NULL,
            status VARCHAR(10) NOT NULL,
            n BIGINT NOT NULL,
            PRIMARY KEY (mailout_id, status)
        ){table}""",
        MAILOUT_ROLLUP_FILL,
        "CREATE INDEX notify_mailout_id ON notify (mailout_id, id)",
        "CREATE INDEX notify_mailout_state ON notify (mailout_id, state, attempts)",
    ],
    [
        """CREATE TABLE delivery_dsn_total (
            dsn_class VARCHAR(8) NOT NULL PRIMARY KEY,
            n BIGINT NOT NULL
        ){table}""",
        DSN_ROLLUP_FILL,
    ],
]

LATEST = len(MIGRATIONS)
