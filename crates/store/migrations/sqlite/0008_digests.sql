-- Daily digests: an organisation's digest hour (NULL: immediate), and on each email delivery
-- the digest it goes out in (NULL: sent at once).
ALTER TABLE organisations ADD COLUMN digest_hour INTEGER;
ALTER TABLE deliveries ADD COLUMN digest_at TEXT;
CREATE INDEX deliveries_digest ON deliveries (recipient_id, digest_at) WHERE digest_at IS NOT NULL;
