-- A partner organisation's token for the incident API, stored as its SHA-256.
ALTER TABLE organisations ADD COLUMN incident_token_hash TEXT;
CREATE UNIQUE INDEX organisations_incident_token ON organisations (incident_token_hash) WHERE incident_token_hash IS NOT NULL;
