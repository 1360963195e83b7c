"""Architecture and documentation checks: import direction, migrations, settings in the README."""

import ast
from dataclasses import fields
from pathlib import Path

import pytest

from storegate.settings import Settings
from storegate.store.migrate import _statements, migrations

SRC = Path(__file__).resolve().parents[2] / "src" / "storegate"
README = Path(__file__).resolve().parents[2] / "README.md"
# Imports flow one way: api/cli -> service -> store, backends. store and backends never look up.
FORBIDDEN = {
    "store": ("storegate.api", "storegate.service", "storegate.backends", "storegate.app"),
    "backends": ("storegate.api", "storegate.service", "storegate.store", "storegate.app"),
    "service": ("storegate.api", "storegate.app", "aiohttp.web"),
}


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def test_imports_flow_one_way() -> None:
    for package, forbidden in FORBIDDEN.items():
        for path in (SRC / package).rglob("*.py"):
            bad = {i for i in _imports(path) if i.startswith(forbidden)}
            assert not bad, f"{path.relative_to(SRC)} imports {sorted(bad)}"


def test_migrations_are_numbered_one_to_n() -> None:
    versions = [m.version for m in migrations("sqlite")]
    assert versions == list(range(1, len(versions) + 1))


def test_every_module_starts_with_a_docstring() -> None:
    for path in SRC.rglob("*.py"):
        assert ast.get_docstring(ast.parse(path.read_text())), f"{path.relative_to(SRC)} has no docstring"


def test_readme_documents_every_setting() -> None:
    readme = README.read_text()
    for f in fields(Settings):
        env = f.metadata.get("env")
        if env:
            assert env in readme, f"README does not document {env}"
            flag = "--backend" if f.name == "backend_url" else "--" + f.name.replace("_", "-")
            assert flag in readme, f"README does not document {flag}"


def test_migration_statements_split_where_sqlite_says_they_end() -> None:
    sql = "-- a comment; with a semicolon\nCREATE TABLE t (n INT);\nCREATE TRIGGER g AFTER INSERT ON t\n" \
          "BEGIN\n    UPDATE t SET n = n + 1;\n    SELECT ';';\nEND;\n"  # fmt: skip
    assert _statements(sql) == [
        "CREATE TABLE t (n INT);",
        "CREATE TRIGGER g AFTER INSERT ON t\nBEGIN\n    UPDATE t SET n = n + 1;\n    SELECT ';';\nEND;",
    ]
    with pytest.raises(RuntimeError, match="ends inside a statement"):
        _statements("CREATE TRIGGER g AFTER INSERT ON t BEGIN UPDATE t SET n = 1;")
