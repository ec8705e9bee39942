-- Where an incremental feed got to (CSAF: the newest document time processed; NVD: the end
-- of the last window), so a restart resumes instead of starting over.
ALTER TABLE feed_state ADD COLUMN cursor TEXT;
