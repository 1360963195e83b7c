"""Shared fixtures: one fake backend and one storegate for the session; fresh ones where a test
needs its own (a restart, a crash, other flags)."""

from collections.abc import Iterator

import httpx2 as httpx
import openai
import pytest

from tests.fakes import FakeBackend
from tests.server import Storegate


@pytest.fixture(scope="session")
def fake() -> Iterator[FakeBackend]:
    with FakeBackend(models=["fake-model", "other-model"]) as backend:
        yield backend


@pytest.fixture(scope="session")
def server(fake: FakeBackend) -> Iterator[Storegate]:
    sg = Storegate(fake.url).start()
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
