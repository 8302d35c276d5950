-- The amount the latest reserve took from a user's balance. An UPDATE's RETURNING
-- shows new values only; writing the amount into the row lets one UPDATE compute it
-- from the very row version it changes, and report it, with no read-then-write race.
ALTER TABLE users ADD COLUMN last_hold bigint NOT NULL DEFAULT 0;
