-- Completions, their filterable tags and their input messages.
-- Ids sort in creation order (see ids.py), so every list walks an index on (project, ..., id).
CREATE TABLE completions (
    id             TEXT PRIMARY KEY,
    project        TEXT NOT NULL,
    created        INTEGER NOT NULL,
    model          TEXT NOT NULL,
    response_model TEXT,
    backend        TEXT NOT NULL,
    backend_id     TEXT,
    incomplete     INTEGER NOT NULL DEFAULT 0,
    metadata       BLOB NOT NULL,
    body           BLOB NOT NULL,
    request        BLOB NOT NULL
);
CREATE INDEX completions_project_id ON completions (project, id);

-- One row per filterable value: kind 'm' is a model name (requested or reported), 'k' a metadata
-- key whose value is `value`. A filter is an ordered walk of the primary key.
CREATE TABLE completion_tags (
    project TEXT NOT NULL,
    kind    TEXT NOT NULL,
    name    TEXT NOT NULL,
    value   TEXT NOT NULL,
    id      TEXT NOT NULL,
    PRIMARY KEY (project, kind, name, value, id)
) WITHOUT ROWID;

CREATE TABLE messages (
    completion_id TEXT NOT NULL,
    idx           INTEGER NOT NULL,
    item          BLOB NOT NULL,
    PRIMARY KEY (completion_id, idx)
) WITHOUT ROWID;
