-- The raw request moves out of the completions row into a table of its own. Nothing on a read path
-- reads it, yet at ~0.7 KB next to a ~1.4 KB body it made a row too large for two to share a 4 KiB
-- page: every row had a page to itself (41% of it empty), so a retrieve and each row of a list page
-- read a page twice as large as the row they needed, and the page cache held half the rows it could.
-- Measured on a 250k-row copy of the bench's store (a list of 20 by a metadata filter, file in the
-- OS cache, 64 MiB page cache): 23 page reads from the OS per list -> 12 (with 8 KiB pages, which
-- new databases get), the query ~0.80-0.84x its time; a retrieve ~0.9x.
-- The table is rebuilt once, its rows in the order they were written (rowid): the bench's 1M store
-- took 3 min 41 s, and the file keeps the old table's pages for new rows (`storegate db compact`
-- gives them back). Indexes and triggers someone added to completions go with the old table; views
-- on it stay valid (legacy_alter_table: the rename does not re-check them).
-- One B-tree keyed by id (WITHOUT ROWID): a write adds one entry, not an index entry and a row; a
-- request too large for its page spills into overflow pages, which only a delete ever reads.
CREATE TABLE completion_requests (
    id      TEXT PRIMARY KEY,
    request BLOB NOT NULL
) WITHOUT ROWID;
INSERT INTO completion_requests (id, request) SELECT id, request FROM completions ORDER BY id;
CREATE TABLE completions_0004 (
    id             TEXT PRIMARY KEY,
    project        TEXT NOT NULL,
    created        INTEGER NOT NULL,
    model          TEXT NOT NULL,
    response_model TEXT,
    backend        TEXT NOT NULL,
    backend_id     TEXT,
    incomplete     INTEGER NOT NULL DEFAULT 0,
    metadata       BLOB NOT NULL,
    body           BLOB NOT NULL
);
INSERT INTO completions_0004
    SELECT id, project, created, model, response_model, backend, backend_id, incomplete, metadata, body
    FROM completions ORDER BY rowid;
DROP TABLE completions;
PRAGMA legacy_alter_table = ON;
ALTER TABLE completions_0004 RENAME TO completions;
PRAGMA legacy_alter_table = OFF;
CREATE INDEX completions_project_id ON completions (project, id);
