-- One advisory per real issue: each record belongs to an issue (by default its own), and
-- the identity keys (advisory ids, GHSA ids, a single-CVE record's CVE) point to issues.
ALTER TABLE advisories ADD COLUMN issue_id TEXT;
UPDATE advisories SET issue_id = id;
CREATE INDEX advisories_issue ON advisories (issue_id);
CREATE TABLE issue_keys (
    key       TEXT PRIMARY KEY,
    issue_id  TEXT NOT NULL
);
CREATE INDEX issue_keys_issue ON issue_keys (issue_id);
