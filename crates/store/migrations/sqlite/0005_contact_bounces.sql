-- An address that keeps hard-bouncing is suppressed with the reason (list hygiene).
ALTER TABLE contacts ADD COLUMN suppressed_reason TEXT;
