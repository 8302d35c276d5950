-- A feed of changes that affect whether a key authenticates (a key revoked or edited, a
-- user disabled). Edges keep authenticated keys for minutes and poll this feed, through
-- the auth service, several times a second: a revocation still bites everywhere within a
-- second, and a key in steady use costs the auth service nothing. Triggers fill it, so
-- no code path that changes a key or a user can forget to.
CREATE TABLE key_changes (
    id       bigserial PRIMARY KEY,
    key_id   bigint,
    user_id  bigint,
    at       timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION note_key_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_TABLE_NAME = 'api_keys' THEN
        INSERT INTO key_changes (key_id, user_id) VALUES (OLD.id, OLD.user_id);
    ELSIF NEW.disabled IS DISTINCT FROM OLD.disabled THEN
        INSERT INTO key_changes (user_id) VALUES (NEW.id);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER api_keys_changed AFTER UPDATE OR DELETE ON api_keys
    FOR EACH ROW EXECUTE FUNCTION note_key_change();
CREATE TRIGGER users_disabled_changed AFTER UPDATE OF disabled ON users
    FOR EACH ROW EXECUTE FUNCTION note_key_change();
