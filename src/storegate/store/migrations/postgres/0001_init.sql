-- Completions, their filterable tags and their input messages. Ids sort in creation order
-- (see ids.py) under the "C" collation, so every list walks an index on (project, ..., id).
-- Filter values and bodies are bytea: the exact bytes, NUL characters included.
CREATE TABLE completions (
    id             TEXT COLLATE "C" PRIMARY KEY,
    project        TEXT COLLATE "C" NOT NULL,
    created        BIGINT NOT NULL,
    model          TEXT NOT NULL,
    response_model TEXT,
    backend        TEXT NOT NULL,
    backend_id     TEXT,
    incomplete     BOOLEAN NOT NULL DEFAULT false,
    metadata       BYTEA NOT NULL,
    body           BYTEA NOT NULL,
    request        BYTEA NOT NULL
);
CREATE INDEX completions_project_id ON completions (project, id);

CREATE TABLE completion_tags (
    project TEXT COLLATE "C" NOT NULL,
    kind    TEXT COLLATE "C" NOT NULL,
    name    BYTEA NOT NULL,
    value   BYTEA NOT NULL,
    id      TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (project, kind, name, value, id)
);

CREATE TABLE messages (
    completion_id TEXT COLLATE "C" NOT NULL,
    idx           INTEGER NOT NULL,
    item          BYTEA NOT NULL,
    PRIMARY KEY (completion_id, idx)
);
