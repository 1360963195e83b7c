"""`--event-loop asyncio`: the whole suite runs on uvloop (the default); this runs one stored
completion's life on asyncio's loop, on both stores, through the official SDK."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fakes import FakeBackend
from tests.server import Storegate

USER_HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def asyncio_server(request: pytest.FixtureRequest, fake: FakeBackend) -> Iterator[Storegate]:
    url = None if request.param == "sqlite" else request.getfixturevalue("postgres").create_database()
    sg = Storegate(fake.url, db_url=url, args=["--event-loop", "asyncio"]).start()
    yield sg
    sg.stop()


def test_a_stored_completion_lives_its_life_on_asyncio(asyncio_server: Storegate) -> None:
    with asyncio_server.client() as client:
        made = client.chat.completions.create(model="fake-model", messages=USER_HI, store=True,  # type: ignore[arg-type]
                                              metadata={"loop": "asyncio"})  # fmt: skip
        stream = client.chat.completions.create(model="fake-model", messages=USER_HI, store=True,  # type: ignore[arg-type]
                                                metadata={"loop": "asyncio"}, stream=True)  # fmt: skip
        streamed = {chunk.id for chunk in stream}
        assert len(streamed) == 1
        got = client.chat.completions.retrieve(made.id)
        assert got.id == made.id and got.metadata == {"loop": "asyncio"}
        listed = client.chat.completions.list(metadata={"loop": "asyncio"}, order="asc")
        assert [c.id for c in listed.data] == [made.id, *streamed]
        assert [m.content for m in client.chat.completions.messages.list(made.id).data] == ["hi"]
        updated = client.chat.completions.update(made.id, metadata={"loop": "asyncio", "seen": "yes"})
        assert updated.metadata == {"loop": "asyncio", "seen": "yes"}
        assert client.chat.completions.delete(made.id).deleted
        assert [c.id for c in client.chat.completions.list(metadata={"loop": "asyncio"}).data] == [*streamed]
        assert "event loop asyncio" in asyncio_server.logs()
