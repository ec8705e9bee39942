-- A webhook endpoint that keeps failing: since when, how many attempts in a row, and when its
-- organisation was warned. Reset by a success or by enabling the endpoint again.
ALTER TABLE endpoints ADD COLUMN failing_since TIMESTAMPTZ;
ALTER TABLE endpoints ADD COLUMN consecutive_failures INTEGER NOT NULL DEFAULT 0;
ALTER TABLE endpoints ADD COLUMN failure_warned_at TIMESTAMPTZ;
