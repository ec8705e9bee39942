-- Broadcast schema, SQLite backend. Times are RFC 3339 text in UTC (sqlx's chrono encoding),
-- which sorts correctly as text. JSON documents are stored as text.

CREATE TABLE advisories (
    id            TEXT PRIMARY KEY,
    source        TEXT NOT NULL,
    external_id   TEXT NOT NULL,
    revision      INTEGER NOT NULL,
    content       TEXT NOT NULL,
    first_seen    TEXT NOT NULL,
    last_changed  TEXT NOT NULL,
    UNIQUE (source, external_id)
);
CREATE INDEX advisories_last_changed ON advisories (last_changed);

CREATE TABLE advisory_revisions (
    advisory_id   TEXT NOT NULL REFERENCES advisories (id),
    revision      INTEGER NOT NULL,
    content       TEXT NOT NULL,
    collected_at  TEXT NOT NULL,
    PRIMARY KEY (advisory_id, revision)
);

CREATE TABLE assessments (
    advisory_id        TEXT NOT NULL REFERENCES advisories (id),
    advisory_revision  INTEGER NOT NULL,
    relevant           BOOLEAN NOT NULL,
    threat_level       TEXT NOT NULL,
    score              REAL NOT NULL,
    reasons            TEXT NOT NULL,
    assessed_at        TEXT NOT NULL,
    PRIMARY KEY (advisory_id, advisory_revision)
);

CREATE TABLE feed_state (
    feed_id               TEXT PRIMARY KEY,
    etag                  TEXT,
    last_modified         TEXT,
    last_attempt          TEXT,
    last_success          TEXT,
    last_error            TEXT,
    consecutive_failures  INTEGER NOT NULL DEFAULT 0,
    items_seen            BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE analysts (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    role        TEXT NOT NULL,
    token_hash  TEXT UNIQUE,
    created_at  TEXT NOT NULL
);

CREATE TABLE bulletin_seq (
    year  INTEGER PRIMARY KEY,
    last  BIGINT NOT NULL
);

CREATE TABLE bulletins (
    id              TEXT PRIMARY KEY,
    reference       TEXT NOT NULL UNIQUE,
    state           TEXT NOT NULL,
    content         TEXT NOT NULL,
    advisory_ids    TEXT NOT NULL,
    author_id       TEXT NOT NULL REFERENCES analysts (id),
    approver_id     TEXT REFERENCES analysts (id),
    review_comment  TEXT,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL,
    published_at    TEXT,
    version         INTEGER NOT NULL
);
CREATE INDEX bulletins_state ON bulletins (state, updated_at);

CREATE TABLE bulletin_events (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    bulletin_id  TEXT NOT NULL REFERENCES bulletins (id),
    action       TEXT NOT NULL,
    actor_id     TEXT NOT NULL,
    from_state   TEXT,
    to_state     TEXT NOT NULL,
    comment      TEXT,
    at           TEXT NOT NULL
);
CREATE INDEX bulletin_events_bulletin ON bulletin_events (bulletin_id, id);

CREATE TABLE organisations (
    id                TEXT PRIMARY KEY,
    name              TEXT NOT NULL UNIQUE,
    tlp_clearance     TEXT NOT NULL,
    min_threat_level  TEXT NOT NULL,
    created_at        TEXT NOT NULL
);

CREATE TABLE contacts (
    id            TEXT PRIMARY KEY,
    org_id        TEXT NOT NULL REFERENCES organisations (id),
    email         TEXT NOT NULL,
    name          TEXT NOT NULL,
    unsubscribed  BOOLEAN NOT NULL DEFAULT FALSE,
    created_at    TEXT NOT NULL,
    UNIQUE (org_id, email)
);

CREATE TABLE endpoints (
    id          TEXT PRIMARY KEY,
    org_id      TEXT NOT NULL REFERENCES organisations (id),
    url         TEXT NOT NULL,
    secret      TEXT NOT NULL,
    enabled     BOOLEAN NOT NULL DEFAULT TRUE,
    created_at  TEXT NOT NULL
);

CREATE TABLE deliveries (
    id               TEXT PRIMARY KEY,
    bulletin_id      TEXT NOT NULL REFERENCES bulletins (id),
    org_id           TEXT NOT NULL REFERENCES organisations (id),
    channel          TEXT NOT NULL,
    recipient_id     TEXT NOT NULL,
    address          TEXT NOT NULL,
    state            TEXT NOT NULL,
    reason           TEXT,
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  TEXT NOT NULL,
    lease_until      TEXT,
    leased_by        TEXT,
    delivered_at     TEXT,
    created_at       TEXT NOT NULL,
    UNIQUE (bulletin_id, channel, recipient_id)
);
CREATE INDEX deliveries_due ON deliveries (state, next_attempt_at);
CREATE INDEX deliveries_bulletin ON deliveries (bulletin_id, state);

CREATE TABLE delivery_attempts (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery_id  TEXT NOT NULL REFERENCES deliveries (id),
    attempt      INTEGER NOT NULL,
    started_at   TEXT NOT NULL,
    duration_ms  BIGINT NOT NULL,
    outcome      TEXT NOT NULL,
    detail       TEXT NOT NULL
);
CREATE INDEX delivery_attempts_delivery ON delivery_attempts (delivery_id, id);
