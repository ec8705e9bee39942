-- Vendor/product interests per organisation (JSON array; empty = every bulletin).
ALTER TABLE organisations ADD COLUMN interests TEXT NOT NULL DEFAULT '[]';
