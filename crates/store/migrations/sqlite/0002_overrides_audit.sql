-- Analyst overrides of triage verdicts, and the append-only, hash-chained audit log.

CREATE TABLE assessment_overrides (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    advisory_id        TEXT NOT NULL REFERENCES advisories (id),
    advisory_revision  INTEGER NOT NULL,
    relevant           BOOLEAN,
    threat_level       TEXT,
    reason             TEXT NOT NULL,
    analyst_id         TEXT NOT NULL REFERENCES analysts (id),
    at                 TEXT NOT NULL
);
CREATE INDEX assessment_overrides_advisory ON assessment_overrides (advisory_id, advisory_revision, id);

-- One row: the sequence number and hash of the last entry. Appenders lock it, so entries are
-- numbered without gaps even with several writers.
CREATE TABLE audit_head (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    seq   BIGINT NOT NULL,
    hash  TEXT NOT NULL
);
INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');

CREATE TABLE audit_log (
    seq        BIGINT PRIMARY KEY,
    at         TEXT NOT NULL,
    actor      TEXT NOT NULL,
    action     TEXT NOT NULL,
    subject    TEXT NOT NULL,
    details    TEXT NOT NULL,
    prev_hash  TEXT NOT NULL,
    hash       TEXT NOT NULL
);
