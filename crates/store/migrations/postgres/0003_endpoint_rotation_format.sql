-- Webhook secret rotation (the previous secret keeps signing until the overlap ends) and the
-- payload format per endpoint.
ALTER TABLE endpoints ADD COLUMN previous_secret TEXT;
ALTER TABLE endpoints ADD COLUMN previous_secret_until TIMESTAMPTZ;
ALTER TABLE endpoints ADD COLUMN format TEXT NOT NULL DEFAULT 'broadcast';
