-- Console accounts: an argon2 password per analyst (NULL: API token only) and sign-in
-- sessions, stored by the hash of the cookie value with the session's CSRF token.
ALTER TABLE analysts ADD COLUMN password_hash TEXT;
CREATE TABLE sessions (
    id_hash     TEXT PRIMARY KEY,
    analyst_id  TEXT NOT NULL REFERENCES analysts (id) ON DELETE CASCADE,
    csrf        TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    expires_at  TEXT NOT NULL
);
CREATE INDEX sessions_analyst ON sessions (analyst_id);
