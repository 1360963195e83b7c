"""SQLite's layout: a completion's raw request lives apart from its row (migration 0004), new
databases use 8 KiB pages, and a store written before 0004 is carried over whole."""

import asyncio
import sqlite3
from pathlib import Path

import orjson
import pytest

from storegate.cli.main import main as storegate
from storegate.settings import Settings
from storegate.store import ListQuery, MessagesQuery, NewCompletion, Store
from storegate.store.factory import make_store
from storegate.store.migrate import _statements, migrations
from tests.store.test_contract import completion


def _open(path: Path) -> Store:
    return make_store(Settings(db=f"sqlite:///{path}"))


async def _open_close(path: Path) -> None:
    store = _open(path)
    await store.open()
    await store.close()


def _columns(db: sqlite3.Connection, table: str) -> list[str]:
    return [row[1] for row in db.execute(f"PRAGMA table_info({table})")]


def test_a_new_store_keeps_requests_apart_on_8_kib_pages(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    made = [completion(metadata={"env": "dev"}) for _ in range(3)]

    async def main() -> None:
        store = _open(path)
        await store.open()
        try:
            for c in made:
                await store.insert(c)
            assert await store.delete("p", made[0].id)
            assert await store.purge(made[2].id, "p", (), 10) == 1  # made[1]: made[0] is gone already
        finally:
            await store.close()

    asyncio.run(main())
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA page_size").fetchone()[0] == 8192
    assert "request" not in _columns(db, "completions")
    kept = dict(db.execute("SELECT id, request FROM completion_requests").fetchall())
    assert kept == {made[2].id: made[2].request}, "a delete and a purge take the request with them"


_COLUMNS = "id, project, created, model, response_model, backend, backend_id, incomplete, metadata, body"


def _old_store(path: Path, n: int) -> tuple[list[NewCompletion], list[tuple[object, ...]]]:
    """A store as migrations 1-3 left it: 4 KiB pages, the request in the row. Returns the completions
    and their rows as written (every column but the request), in id order."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)")  # fmt: skip
    for migration in migrations("sqlite")[:3]:
        for statement in _statements(migration.sql):
            db.execute(statement)
        db.execute("INSERT INTO schema_migrations VALUES (?, ?, ?)", (migration.version, migration.name, 0))
    made = [completion(metadata={"env": "dev" if i % 2 else "prod", "i": str(i)}, messages=i % 3,
                       response_model=f"rm{i}" if i % 3 else None) for i in range(n)]  # fmt: skip
    rows: list[tuple[object, ...]] = []
    for i, c in enumerate(made):
        row = (c.id, c.project, c.created + i, c.model, c.response_model, f"backend{i % 4}",
               f"x{i}" if i % 5 else None, i % 2, orjson.dumps(c.metadata), c.body)  # fmt: skip
        db.execute(
            "INSERT INTO completions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (*row, c.request + c.id.encode()),
        )
        rows.append(row)
        for kind, name, value in [("m", "", c.model), *(("k", k, v) for k, v in c.metadata.items())]:
            db.execute(
                "INSERT INTO completion_tags VALUES (?, ?, ?, ?, ?)", (c.project, kind, name, value, c.id)
            )
        for i, item in enumerate(c.messages):
            db.execute("INSERT INTO messages VALUES (?, ?, ?)", (c.id, i, item))
    db.execute("CREATE VIEW recent AS SELECT id, created FROM completions")  # one a user might have made
    db.close()
    return made, sorted(rows, key=lambda r: str(r[0]))


def _schema(db: sqlite3.Connection, table: str) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    """A table's columns (name, type, not null, default, primary key) and its indexes with their columns."""
    columns = [tuple(r[1:]) for r in db.execute(f"PRAGMA table_info({table})")]
    indexes = sorted(
        (r[1].replace("sqlite_autoindex_completions_1", "pk"), r[2], r[3],
         tuple(c[2] for c in db.execute(f"PRAGMA index_info('{r[1]}')")))
        for r in db.execute(f"PRAGMA index_list({table})")
    )  # fmt: skip
    return columns, indexes


def test_a_store_written_before_0004_is_carried_over_whole(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    made, written = _old_store(path, 40)
    dev = sorted(c.id for c in made if c.metadata["env"] == "dev")
    newer = completion(metadata={"env": "dev"})

    async def main() -> None:
        store = _open(path)
        await store.open()
        try:
            assert store.migrations_applied == [m.version for m in migrations("sqlite")[3:]]
            for c in made:
                row = await store.get("p", c.id)
                assert row is not None and row.body == c.body and orjson.loads(row.metadata) == c.metadata
                page = await store.list_messages(MessagesQuery("p", c.id, None, 20, "asc"))
                assert page is not None and [item for _, item in page.items] == c.messages
            listed = await store.list(ListQuery(project="p", model=None, metadata={"env": "dev"}, after=None,
                                                limit=100, order="asc"))  # fmt: skip
            assert [r.id for r in listed.items] == dev
            await store.insert(newer)
            assert await store.get("p", newer.id) is not None
            assert await store.delete("p", made[0].id)
        finally:
            await store.close()

    asyncio.run(main())
    db = sqlite3.connect(path)
    kept = db.execute(f"SELECT {_COLUMNS} FROM completions WHERE id != ? ORDER BY id", (newer.id,)).fetchall()
    assert kept == written[1:], "every column of every row, as written (made[0] was deleted)"
    asyncio.run(_open_close(tmp_path / "fresh.db"))
    fresh = sqlite3.connect(tmp_path / "fresh.db")
    for table in ("completions", "completion_requests"):
        assert _schema(db, table) == _schema(fresh, table), table
    assert db.execute("SELECT count(*) FROM recent").fetchone()[0] == len(made), (
        "a view on completions still reads"
    )
    kept = dict(db.execute("SELECT id, request FROM completion_requests").fetchall())
    assert kept == {c.id: c.request + c.id.encode() for c in made[1:]} | {newer.id: newer.request}
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_compact_moves_an_old_store_to_8_kib_pages_and_refuses_a_file_in_use(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "old.db"
    made, written = _old_store(path, 300)
    url = f"sqlite:///{path}"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("SELECT count(*) FROM completions").fetchone()  # a server's reader has the file open
    assert storegate(["db", "compact", "--db", url]) == 2
    assert "database is locked" in capsys.readouterr().err
    assert holder.execute("PRAGMA page_size").fetchone()[0] == 4096, "refused: nothing changed"
    assert holder.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert holder.execute("SELECT max(version) FROM schema_migrations").fetchone()[0] == 3, (
        "not even a migration"
    )
    holder.close()

    assert storegate(["db", "compact", "--db", url]) == 0
    out = capsys.readouterr().out
    assert "applied migrations [4]" in out and "pages of 4096 -> 8192 bytes" in out
    db = sqlite3.connect(path)
    assert db.execute(f"SELECT {_COLUMNS} FROM completions ORDER BY id").fetchall() == written
    assert dict(db.execute("SELECT id, request FROM completion_requests")) == {
        c.id: c.request + c.id.encode() for c in made
    }
    assert db.execute("PRAGMA page_size").fetchone()[0] == 8192
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA freelist_count").fetchone()[0] == 0, "the rebuild's freed pages are gone"
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()

    async def check() -> None:
        store = _open(path)
        await store.open()
        try:
            for c in made:
                row = await store.get("p", c.id)
                assert row is not None and row.body == c.body
        finally:
            await store.close()

    asyncio.run(check())


def test_compact_is_for_sqlite_files_that_exist(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert storegate(["db", "compact", "--db", "postgresql://nobody@127.0.0.1:1/none"]) == 2
    assert "for SQLite files" in capsys.readouterr().err
    missing = tmp_path / "missing.db"
    assert storegate(["db", "compact", "--db", f"sqlite:///{missing}"]) == 2
    assert "no SQLite database at" in capsys.readouterr().err
    assert not missing.exists(), "nothing created"
