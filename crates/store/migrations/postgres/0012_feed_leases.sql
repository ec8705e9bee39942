-- One node runs a feed at a time: the holder and until when (renewed while it runs).
CREATE TABLE feed_leases (
    feed_id  TEXT PRIMARY KEY,
    holder   TEXT NOT NULL,
    until    TIMESTAMPTZ NOT NULL
);
