-- API keys: each belongs to a project; only the SHA-256 of the secret is kept.
CREATE TABLE api_keys (
    id         TEXT PRIMARY KEY,
    project    TEXT NOT NULL,
    hash       BLOB NOT NULL UNIQUE,
    prefix     TEXT NOT NULL,
    rpm        INTEGER,
    created    INTEGER NOT NULL,
    last_used  INTEGER,
    revoked    INTEGER
);
