"""Keys and projects: an isolation matrix between two projects, revocation, rate limits, and that
no key ever reaches a log."""

import re
from collections.abc import Iterator
from typing import Any

import httpx2 as httpx
import openai
import pytest

from tests.fakes import FakeBackend
from tests.server import Storegate

MSG = [{"role": "user", "content": "secret plans"}]
NOT_FOUND = "No chat completion found with id '{}'."


class World:
    def __init__(self, sg: Storegate) -> None:
        self.sg = sg
        self.keys: dict[str, str] = {}
        self.key_ids: dict[str, str] = {}
        self.clients: list[openai.OpenAI] = []

    def client(self, secret: str) -> openai.OpenAI:
        client = self.sg.client(api_key=secret)
        self.clients.append(client)
        return client

    def create_key(self, project: str, *extra: str) -> str:
        out = self.sg.cli("keys", "create", "--project", project, *extra)
        assert out.returncode == 0, out.stderr
        secret = out.stdout.strip().splitlines()[-1]
        self.key_ids[secret] = re.search(r"key_[0-9a-f]{16}", out.stdout).group(0)  # type: ignore[union-attr]
        return secret


@pytest.fixture(scope="module")
def world(fake: FakeBackend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    sg = Storegate(fake.url)
    w = World(sg)
    w.keys["a"] = w.create_key("alpha")
    w.keys["b"] = w.create_key("beta")
    sg.start()
    yield w
    for client in w.clients:
        client.close()
    sg.stop()


def _client(world: World, name: str) -> openai.OpenAI:
    return world.client(world.keys[name])


def test_every_v1_route_needs_a_key_once_keys_exist(world: World) -> None:
    routes = [("POST", "/v1/chat/completions"), ("GET", "/v1/chat/completions"), ("GET", "/v1/models"),
              ("GET", "/v1/chat/completions/chatcmpl-" + "a" * 29), ("DELETE", "/v1/chat/completions/x"),
              ("GET", "/v1/chat/completions/x/messages"), ("POST", "/v1/chat/completions/x")]  # fmt: skip
    with world.sg.http() as http:
        for method, path in routes:
            missing = http.request(method, path, json={})
            assert missing.status_code == 401, (method, path)
            assert "didn't provide an API key" in missing.json()["error"]["message"]
            wrong = http.request(method, path, json={}, headers={"Authorization": "Bearer sg-wrong"})
            assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
            assert "sg-wrong" not in wrong.text
        assert http.get("/healthz").status_code == 200 and http.get("/readyz").status_code == 200


def test_projects_are_isolated(world: World) -> None:
    a, b = _client(world, "a"), _client(world, "b")
    mine = a.chat.completions.create(model="fake-model", messages=MSG, store=True, metadata={"t": "iso"})
    theirs = b.chat.completions.create(model="fake-model", messages=MSG, store=True, metadata={"t": "iso"})
    for client, own, other in ((a, mine.id, theirs.id), (b, theirs.id, mine.id)):
        assert client.chat.completions.retrieve(own).id == own
        c = client.chat.completions
        calls: list[tuple[Any, dict[str, Any]]] = [
            (c.retrieve, {}), (c.update, {"metadata": {"x": "y"}}), (c.messages.list, {}), (c.delete, {})
        ]  # fmt: skip
        for call, kwargs in calls:
            with pytest.raises(openai.NotFoundError) as err:
                call(other, **kwargs)
            assert err.value.body == {"message": NOT_FOUND.format(other), "type": "invalid_request_error",
                                      "param": None, "code": None}  # fmt: skip
        for listing in (
            client.chat.completions.list(metadata={"t": "iso"}),
            client.chat.completions.list(model="fake-model"),
            client.chat.completions.list(),
        ):
            assert other not in {c.id for c in listing.data} and own in {c.id for c in listing.data}
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.list(after="not-an-id")
    assert a.chat.completions.retrieve(mine.id).metadata == {"t": "iso"}, "b's update changed nothing"


def test_revoked_key_fails_at_once(world: World) -> None:
    secret = world.create_key("gamma")
    client = world.client(secret)
    for _ in range(3):  # the server now remembers the key: revoking must still reach it
        assert client.chat.completions.list().data == []
    out = world.sg.cli("keys", "revoke", world.key_ids[secret])
    assert out.returncode == 0, out.stderr
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.list()
    again = world.sg.cli("keys", "revoke", world.key_ids[secret])
    assert again.returncode == 1 and "no active key" in again.stderr and again.stdout == ""


def test_keys_list_shows_no_secret(world: World) -> None:
    out = world.sg.cli("keys", "list")
    assert out.returncode == 0 and "alpha" in out.stdout and "beta" in out.stdout
    for secret, key_id in world.key_ids.items():
        assert key_id in out.stdout and secret not in out.stdout


def test_rate_limit_per_key(world: World) -> None:
    client = world.client(world.create_key("limited", "--rpm", "3"))
    for _ in range(3):
        client.chat.completions.list()
    with pytest.raises(openai.RateLimitError) as err:
        client.chat.completions.list()
    assert int(err.value.response.headers["Retry-After"]) >= 1
    assert err.value.body["code"] == "rate_limit_exceeded"  # type: ignore[index]
    _client(world, "a").chat.completions.list()  # other keys are not limited by it


def test_client_key_never_reaches_backend_and_no_key_is_logged(world: World, fake: FakeBackend) -> None:
    fake.clear()
    _client(world, "a").chat.completions.create(model="fake-model", messages=MSG, store=True)
    assert all(world.keys["a"] not in str(r) for r in fake.requests())
    logs = world.sg.logs()
    assert logs, "the server logs requests"
    for secret in world.key_ids:
        assert secret not in logs


def test_no_keys_refuses_a_public_address(fake: FakeBackend) -> None:
    sg = Storegate(fake.url, args=["--host", "0.0.0.0"])
    with pytest.raises(RuntimeError, match="refusing to listen"):
        sg.start(timeout=20)
    sg.stop()


def test_without_keys_everything_is_one_local_project(server: Storegate) -> None:
    with httpx.Client(base_url=server.url) as http:
        assert (
            http.get("/v1/chat/completions", headers={"Authorization": "Bearer anything"}).status_code == 200
        )
        assert http.get("/v1/chat/completions").status_code == 200


def test_the_first_key_locks_the_door_at_once(fake: FakeBackend, fresh_db_url: str | None) -> None:
    """With no keys, the server remembers "no key exists"; the first key created by another
    process must end keyless access on the very next request, on either store."""
    sg = Storegate(fake.url, db_url=fresh_db_url).start()
    try:
        with sg.http() as http:
            for _ in range(3):
                assert http.get("/v1/chat/completions").status_code == 200
            w = World(sg)
            first = w.create_key("first")
            assert http.get("/v1/chat/completions").status_code == 401
            second = w.create_key("second")
            auth = [{"Authorization": f"Bearer {s}"} for s in (first, second)]
            for _ in range(2):
                assert [http.get("/v1/chat/completions", headers=h).status_code for h in auth] == [200, 200]
            assert sg.cli("keys", "revoke", w.key_ids[first]).returncode == 0
            assert [http.get("/v1/chat/completions", headers=h).status_code for h in auth] == [401, 200]
            # Revoking every key does not reopen the server: keys stay required (fail closed).
            assert sg.cli("keys", "revoke", w.key_ids[second]).returncode == 0
            assert [http.get("/v1/chat/completions", headers=h).status_code for h in auth] == [401, 401]
            assert http.get("/v1/chat/completions").status_code == 401
    finally:
        sg.stop()
