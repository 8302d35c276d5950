-- Owner: auth. The key-change feed takes users' standing changes from billing's
-- user_standing_changes view (0016b) instead of a trigger on billing's table: each is copied
-- once, under the id it has there, when the feed is read.
ALTER TABLE key_changes ADD COLUMN standing_change bigint UNIQUE;

-- A user disabled or enabled since 0007's trigger went (between 0016b and this) is noted
-- now, so that no change falls between the two.
INSERT INTO key_changes (user_id, standing_change) SELECT user_id, id FROM user_standing_changes;
