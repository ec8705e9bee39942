-- The delivery worker claims due rows oldest first (ORDER BY next_attempt_at, id). With `id`
-- in the index the claim reads only the rows it takes, in index order, instead of sorting
-- every pending row on each claim (which made a large fan-out quadratic).
DROP INDEX deliveries_due;
CREATE INDEX deliveries_due ON deliveries (state, next_attempt_at, id);
