-- A counter that moves on every change to api_keys that can change who gets in (not on the last-use
-- stamp), whichever process or tool makes it. A server remembers keys while it stands still, so a
-- completion written by this or any other process no longer makes the next request look its key up.
CREATE TABLE key_generation (
    n INTEGER NOT NULL
);
-- Seeded at random: a different database put in this one's place shows a different value.
INSERT INTO key_generation (n) VALUES (abs(random() % 1000000000000));
CREATE TRIGGER api_keys_insert AFTER INSERT ON api_keys
BEGIN
    UPDATE key_generation SET n = n + 1;
END;
CREATE TRIGGER api_keys_update AFTER UPDATE OF id, project, hash, prefix, rpm, created, revoked ON api_keys
BEGIN
    UPDATE key_generation SET n = n + 1;
END;
CREATE TRIGGER api_keys_delete AFTER DELETE ON api_keys
BEGIN
    UPDATE key_generation SET n = n + 1;
END;
