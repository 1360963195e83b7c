-- Tell every replica at once when a key changes (storegate/store/pg_listen.py listens), so replicas
-- can keep what they know of keys in memory. last_used changes are not news: they do not notify.
CREATE FUNCTION storegate_keys_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('storegate_keys', '');
    RETURN NULL;
END
$$;
CREATE TRIGGER api_keys_changed
    AFTER INSERT OR DELETE OR UPDATE OF id, project, hash, rpm, revoked ON api_keys
    FOR EACH STATEMENT EXECUTE FUNCTION storegate_keys_changed();
CREATE TRIGGER api_keys_truncated
    AFTER TRUNCATE ON api_keys
    FOR EACH STATEMENT EXECUTE FUNCTION storegate_keys_changed();
