-- API keys: each belongs to a project; only the SHA-256 of the secret is kept.
CREATE TABLE api_keys (
    id         TEXT COLLATE "C" PRIMARY KEY,
    project    TEXT COLLATE "C" NOT NULL,
    hash       BYTEA NOT NULL UNIQUE,
    prefix     TEXT NOT NULL,
    rpm        INTEGER,
    created    BIGINT NOT NULL,
    last_used  BIGINT,
    revoked    BIGINT
);
CREATE INDEX api_keys_active ON api_keys (revoked) WHERE revoked IS NULL;
