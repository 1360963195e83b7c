"""Shared fixtures: one fake backend for the session, a PostgreSQL server when the suite needs one,
and one storegate per store kind: every test that uses `server` or `client` runs on SQLite and on
PostgreSQL alike."""

import os
from collections.abc import Iterator

import httpx2 as httpx
import openai
import pytest

from tests.fakes import FakeBackend
from tests.pg import PostgresServer, pg_bin
from tests.server import Storegate

STORES = ["sqlite", "postgres"]


@pytest.fixture(scope="session")
def fake() -> Iterator[FakeBackend]:
    with FakeBackend(models=["fake-model", "other-model"]) as backend:
        yield backend


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    bin_dir = pg_bin()
    if bin_dir is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is required in CI: scripts/test installs it with apt-get")
        pytest.skip("PostgreSQL 15 is not installed (scripts/test installs it with apt-get)")
    pg = PostgresServer(bin_dir).start()
    yield pg
    pg.stop()


@pytest.fixture(scope="session", params=STORES)
def db_url(request: pytest.FixtureRequest) -> str | None:
    """A fresh database of each kind; None lets storegate use its own SQLite file."""
    if request.param == "sqlite":
        return None
    pg: PostgresServer = request.getfixturevalue("postgres")
    return pg.create_database()


@pytest.fixture(params=STORES)
def fresh_db_url(request: pytest.FixtureRequest) -> str | None:
    """Like db_url, but a new database for this one test."""
    if request.param == "sqlite":
        return None
    pg: PostgresServer = request.getfixturevalue("postgres")
    return pg.create_database()


@pytest.fixture(scope="module", params=STORES)
def own_server(request: pytest.FixtureRequest, fake: FakeBackend) -> Iterator[Storegate]:
    """A storegate on a fresh database of each kind, for one module."""
    url = None if request.param == "sqlite" else request.getfixturevalue("postgres").create_database()
    sg = Storegate(fake.url, db_url=url).start()
    yield sg
    sg.stop()


@pytest.fixture(scope="session")
def server(fake: FakeBackend, db_url: str | None) -> Iterator[Storegate]:
    sg = Storegate(fake.url, db_url=db_url).start()
    yield sg
    sg.stop()


@pytest.fixture
def client(server: Storegate) -> Iterator[openai.OpenAI]:
    with server.client() as c:
        yield c


@pytest.fixture
def http(server: Storegate) -> Iterator[httpx.Client]:
    with server.http() as h:
        yield h
