-- CISA KEV: every listing seen (applied to advisories naming the CVE, now and later), and
-- which advisories name which CVE (kept by upsert_advisory; filled here for existing rows).
CREATE TABLE kev_entries (
    cve         TEXT PRIMARY KEY,
    date_added  TEXT NOT NULL,
    due_date    TEXT,
    ransomware  BOOLEAN NOT NULL,
    vendor      TEXT NOT NULL,
    product     TEXT NOT NULL,
    name        TEXT NOT NULL,
    first_seen  TIMESTAMPTZ NOT NULL
);
CREATE TABLE advisory_cves (
    cve          TEXT NOT NULL,
    advisory_id  TEXT NOT NULL REFERENCES advisories (id),
    PRIMARY KEY (cve, advisory_id)
);
INSERT INTO advisory_cves (cve, advisory_id)
    SELECT DISTINCT c.cve, a.id FROM advisories a, jsonb_array_elements_text(a.content::jsonb -> 'cves') AS c(cve)
    ON CONFLICT DO NOTHING;
