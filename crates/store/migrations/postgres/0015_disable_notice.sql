-- An endpoint Broadcast disabled owes its organisation a notice: due when (NULL: none owed)
-- and why. Kept until the notice is sent, so a failed send or a restart does not lose it.
ALTER TABLE endpoints ADD COLUMN disable_notice_due TIMESTAMPTZ;
ALTER TABLE endpoints ADD COLUMN disable_notice_reason TEXT;
