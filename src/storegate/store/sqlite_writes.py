"""The SQLite store's writes, as its writer process runs them (store/sqlite_writer.py): the
connections, and each write the server can send, by name (`WRITES`). Kept apart from the store
itself so the writer process imports only these, not asyncio nor the rest of the server: a store
opens in the time that process takes to start. Nor orjson (~45 ms of that start): the server sends
metadata encoded, and the old metadata a write reads back is parsed with json."""

import json
import sqlite3
from collections.abc import Callable
from typing import Any

from storegate.store.base import NewCompletion, Row
from storegate.store.sql import tags
from storegate.store.writer_process import Grouped, Op

_WAL_KEEP_BYTES = 64 * 1024 * 1024
_TAG_INSERT = "INSERT OR IGNORE INTO completion_tags VALUES (?, ?, ?, ?, ?)"
_TAG_DELETE = (
    "DELETE FROM completion_tags WHERE project = ? AND kind = ? AND name = ? AND value = ? AND id = ?"
)


def connect(path: str, cache_kib: int) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout = 10000")
    # Measured (bench/): SQLite's default 2 MiB cache made a retrieve on a 56 MB store cost
    # ~70 us in page reads from the OS; a cache that holds the hot B-tree pages makes it ~30 us.
    conn.execute(f"PRAGMA cache_size = -{cache_kib}")
    return conn


def connect_writer(path: str, cache_kib: int, synchronous: str) -> sqlite3.Connection:
    """The writer process's connection (store/sqlite_writer.py)."""
    conn = connect(path, cache_kib)
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    # Readers hold a snapshot per event-loop pass (SQLiteStore._snapshot), so under steady reads and
    # writes the WAL restarts less often and grows past wal_autocheckpoint's ~4 MB (measured: 15-27
    # MB under 90 s of mixed load, then flat); once it restarts, it is cut back to this size.
    conn.execute(f"PRAGMA journal_size_limit = {_WAL_KEEP_BYTES}")
    return conn


def write(name: str, args: tuple[Any, ...]) -> Op:
    """The write a command names, as the writer process runs it (writer_process.serve)."""
    return WRITES[name](*args)


def _add_key(conn: sqlite3.Connection, *key: Any) -> None:
    conn.execute(
        "INSERT INTO api_keys (id, project, hash, prefix, rpm, created) VALUES (?, ?, ?, ?, ?, ?)", key
    )


def _revoke_key(conn: sqlite3.Connection, key_id: str, when: int) -> int:
    return conn.execute(
        "UPDATE api_keys SET revoked = ? WHERE id = ? AND revoked IS NULL", (when, key_id)
    ).rowcount


def _touch_key(conn: sqlite3.Connection, key_id: str, when: int) -> None:
    conn.execute("UPDATE api_keys SET last_used = ? WHERE id = ?", (when, key_id))


def _insert_many(conn: sqlite3.Connection, inserts: list[tuple[NewCompletion, bytes]]) -> None:
    """Each insert is a new completion and its metadata as JSON (encoded by the server)."""
    # Multi-row INSERTs, not executemany: one statement per table, not one per row (measured when the
    # writer was a thread, in bench/: the writer's CPU per completion).
    completions = [c for c, _ in inserts]
    _insert_rows(conn, "completions (id, project, created, model, response_model, backend, backend_id,"
                 " incomplete, metadata, body)",
                 [(c.id, c.project, c.created, c.model, c.response_model, c.backend, c.backend_id,
                   int(c.incomplete), metadata, c.body) for c, metadata in inserts])  # fmt: skip
    _insert_rows(conn, "completion_requests (id, request)", [(c.id, c.request) for c in completions])
    _insert_rows(conn, "completion_tags", [
        tag for c in completions
        for tag in tags(c.project, c.id, {c.model} | ({c.response_model} if c.response_model else set()), c.metadata)
    ], verb="INSERT OR IGNORE")  # fmt: skip
    _insert_rows(conn, "messages", [(c.id, i, m) for c in completions for i, m in enumerate(c.messages)])


def _insert_rows(conn: sqlite3.Connection, into: str, rows: list[Any], verb: str = "INSERT") -> None:
    if not rows:
        return
    width = len(rows[0])
    one = "(" + ", ".join("?" * width) + ")"
    step = max(1, conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // width)  # 32,766 by default
    for start in range(0, len(rows), step):
        part = rows[start : start + step]
        conn.execute(f"{verb} INTO {into} VALUES {', '.join([one] * len(part))}",
                     [value for row in part for value in row])  # fmt: skip


def _update(conn: sqlite3.Connection, project: str, cid: str, metadata: dict[str, str],
            encoded: bytes) -> Row | None:  # fmt: skip
    found = conn.execute(
        "SELECT body, metadata FROM completions WHERE id = ? AND project = ?", (cid, project)
    )
    row = found.fetchone()
    if row is None:
        return None
    conn.executemany(_TAG_DELETE, tags(project, cid, set(), json.loads(row[1])))
    conn.execute("UPDATE completions SET metadata = ? WHERE id = ?", (encoded, cid))
    conn.executemany(_TAG_INSERT, tags(project, cid, set(), metadata))
    return Row(cid, row[0], encoded)


def _purge(conn: sqlite3.Connection, before_id: str, project: str | None, exclude: tuple[str, ...],
           limit: int) -> int:  # fmt: skip
    where, params = ("project = ?", [project]) if project is not None else ("1 = 1", [])
    if exclude:
        where += f" AND project NOT IN ({', '.join('?' * len(exclude))})"
        params += list(exclude)
    doomed = conn.execute(
        f"SELECT project, id FROM completions WHERE id < ? AND {where} ORDER BY id LIMIT ?",
        (before_id, *params, limit),
    ).fetchall()
    for row_project, cid in doomed:
        _delete(conn, row_project, cid)
    return len(doomed)


def _delete(conn: sqlite3.Connection, project: str, cid: str) -> bool:
    found = conn.execute(
        "SELECT model, response_model, metadata FROM completions WHERE id = ? AND project = ?", (cid, project)
    ).fetchone()
    if found is None:
        return False
    models = {found[0]} | ({found[1]} if found[1] else set())
    conn.executemany(_TAG_DELETE, tags(project, cid, models, json.loads(found[2])))
    conn.execute("DELETE FROM messages WHERE completion_id = ?", (cid,))
    conn.execute("DELETE FROM completion_requests WHERE id = ?", (cid,))
    conn.execute("DELETE FROM completions WHERE id = ?", (cid,))
    return True


def _command(run: Callable[..., Any]) -> Callable[..., Op]:
    return lambda *args: lambda conn: run(conn, *args)


# The writes the server sends its writer process, by name (SQLiteStore._write).
WRITES: dict[str, Callable[..., Op]] = {
    # SQLiteStore.insert's fields, then the metadata as JSON
    "insert": lambda *fields: Grouped(_insert_many, (NewCompletion(*fields[:-1]), fields[-1])),
    "update": _command(_update),
    "delete": _command(_delete),
    "purge": _command(_purge),
    "add_key": _command(_add_key),
    "revoke_key": _command(_revoke_key),
    "touch_key": _command(_touch_key),
}
