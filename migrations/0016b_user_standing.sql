-- Owner: billing. What auth may know of billing's users, as one contract billing owns
-- (issue 16): auth reads these two views and nothing else of `users`, and no trigger of
-- auth's sits on billing's tables.
--
-- user_standing: every user and whether it is disabled (auth joins keys and accounts to it).
-- user_standing_changes: each time a user was disabled or enabled again, in order; auth copies
-- them into its key-change feed (services/auth/store.py key_changes), so a disabled user's
-- keys stop working on every edge within a second.
CREATE VIEW user_standing AS SELECT id AS user_id, disabled FROM users;

CREATE TABLE user_standing_log (
    id       bigserial   PRIMARY KEY,
    user_id  bigint      NOT NULL,
    at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX user_standing_log_at ON user_standing_log (at);

CREATE VIEW user_standing_changes AS SELECT id, user_id, at FROM user_standing_log;

CREATE FUNCTION log_user_standing() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.disabled IS DISTINCT FROM OLD.disabled THEN
        INSERT INTO user_standing_log (user_id) VALUES (NEW.id);
    END IF;
    RETURN NULL;
END $$;

-- Replaces auth's trigger of 0007, which wrote into auth's feed from billing's table.
DROP TRIGGER users_disabled_changed ON users;
CREATE TRIGGER users_standing_changed AFTER UPDATE OF disabled ON users
    FOR EACH ROW EXECUTE FUNCTION log_user_standing();
