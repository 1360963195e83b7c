"""Client errors: every bad request is a 400/404/405/413 in OpenAI's envelope with the param and code
CONTRACT.md names, stores nothing and never reaches the backend. Backend faults, health and request
ids are in test_backend_faults.py."""

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx2 as httpx
import openai
import pytest

from tests.fakes import FakeBackend
from tests.server import Storegate

USER = [{"role": "user", "content": "hello there"}]
UNKNOWN_ID = "chatcmpl-" + "A" * 29
ONLY_WHEN_STORED = "The 'metadata' parameter is only allowed when 'store' is enabled."
ANY = object()  # a param/code the contract leaves open: only its type is checked
KEY64, KEY65 = "k" * 64, "k" * 65
META_17 = {f"k{i}": "v" for i in range(17)}
FILTER_17 = {f"metadata[k{i}]": "v" for i in range(17)}

# (metadata, expected param, expected code): CONTRACT.md "Creating: store and metadata"
METADATA_VIOLATIONS = [
    pytest.param(META_17, "metadata", "object_above_max_properties", id="17-keys"),
    pytest.param({KEY65: "v"}, "metadata", "string_above_max_length", id="65-char-key"),
    pytest.param({"team": "x" * 513}, "metadata.team", "string_above_max_length", id="513-char-value"),
    pytest.param({"team": 5}, "metadata.team", "invalid_type", id="int-value"),
    pytest.param({"team": None}, "metadata.team", "invalid_type", id="null-value"),
    pytest.param({"team": ["a"]}, "metadata.team", "invalid_type", id="array-value"),
]


def assert_error(
    resp: httpx.Response, status: int, *, param: object = ANY, code: object = ANY, type_: object = ANY
) -> dict[str, Any]:
    """The envelope with all four keys, and the named fields; returns the error object."""
    assert resp.status_code == status, resp.text
    assert resp.headers.get("x-request-id", "").startswith("req_")
    body = resp.json()
    assert list(body) == ["error"], body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"], error
    assert isinstance(error["type"], str) and error["type"], error
    assert error["param"] is None or isinstance(error["param"], str), error
    assert error["code"] is None or isinstance(error["code"], str), error
    for key, want in (("param", param), ("code", code), ("type", type_)):
        if want is not ANY:
            assert error[key] == want, f"{key}: {error}"
    return dict(error)


def not_found_body(completion_id: str) -> dict[str, Any]:
    message = f"No chat completion found with id '{completion_id}'."
    return {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}}


def stored_count(http: httpx.Client) -> int:
    count, after = 0, None
    while True:
        params: dict[str, str | int] = {"limit": 100, **({"after": after} if after else {})}
        resp = http.get("/v1/chat/completions", params=params)
        assert resp.status_code == 200, resp.text
        page = resp.json()
        count += len(page["data"])
        if not page["has_more"]:
            return count
        after = page["last_id"]


def post_raw(http: httpx.Client, path: str, content: bytes) -> httpx.Response:
    return http.post(path, content=content, headers={"Content-Type": "application/json"})


def create(http: httpx.Client, **body: Any) -> dict[str, Any]:
    resp = http.post("/v1/chat/completions", json={"model": "fake-model", "messages": USER, **body})
    assert resp.status_code == 200, resp.text
    doc: dict[str, Any] = resp.json()
    return doc


@pytest.fixture(scope="module")
def stored_id(server: Storegate) -> str:
    with server.http() as h:
        return str(create(h, store=True, metadata={"team": "a"})["id"])


@pytest.fixture(scope="module")
def unstored_id(server: Storegate) -> str:
    with server.http() as h:
        return str(create(h, store=False)["id"])


@pytest.fixture(scope="module")
def deleted_id(server: Storegate) -> str:
    with server.http() as h:
        completion_id = str(create(h, store=True)["id"])
        assert h.delete(f"/v1/chat/completions/{completion_id}").status_code == 200
        return completion_id


@contextmanager
def unchanged(http: httpx.Client, fake: FakeBackend) -> Iterator[None]:
    """Nothing was stored and the backend was not called by what runs inside."""
    count, calls = stored_count(http), len(fake.requests())
    yield
    assert stored_count(http) == count, "a rejected request stored something"
    assert len(fake.requests()) == calls, "a rejected request reached the backend"


# --- create: the body ---------------------------------------------------------------------------------


def _body(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        pytest.param(b'{"model": "fake-model", "messages": [', None, id="invalid-json"),
        pytest.param(b"", None, id="empty-body"),
        pytest.param(b'[{"model": "fake-model"}]', None, id="json-array"),
        pytest.param(b'"fake-model"', None, id="json-string"),
        pytest.param(b"null", None, id="json-null"),
        pytest.param(_body(messages=USER), "model", id="missing-model"),
        pytest.param(_body(model="fake-model"), "messages", id="missing-messages"),
        pytest.param(_body(model="fake-model", messages=[]), "messages", id="empty-messages"),
        pytest.param(_body(model="fake-model", messages=USER[0]), "messages", id="messages-object"),
        pytest.param(_body(model="fake-model", messages="hi"), "messages", id="messages-string"),
        pytest.param(_body(model="fake-model", messages=None), "messages", id="messages-null"),
        pytest.param(_body(model="fake-model", messages=["hi"]), "messages*", id="message-not-object"),
        pytest.param(_body(model="fake-model", messages=[USER[0], 7]), "messages*", id="message-int"),
        pytest.param(_body(model=42, messages=USER), "model", id="model-int"),
        pytest.param(_body(model=None, messages=USER), "model", id="model-null"),
        pytest.param(_body(model="", messages=USER), "model", id="model-empty"),
        pytest.param(_body(model=["fake-model"], messages=USER), "model", id="model-array"),
        pytest.param(_body(model="fake-model", messages=USER, store="true"), "store", id="store-string"),
        pytest.param(_body(model="fake-model", messages=USER, store=1), "store", id="store-int"),
        # beyond 64 bits: orjson would read it as a float, and a re-written body would change it
        pytest.param(
            _body(model="fake-model", messages=USER, store=True, seed=2**64), None, id="int-above-64-bits"
        ),
        pytest.param(
            _body(model="fake-model", messages=USER, seed=-(2**63) - 1), None, id="int-below-64-bits"
        ),
    ],
)
def test_create_rejects_bad_body(
    http: httpx.Client, fake: FakeBackend, raw: bytes, param: str | None
) -> None:
    with unchanged(http, fake):
        resp = post_raw(http, "/v1/chat/completions", raw)
        error = assert_error(resp, 400, type_="invalid_request_error")
    if param == "messages*":  # which message is wrong may be named: messages or messages[i]
        assert error["param"] is not None and error["param"].startswith("messages"), error
    else:
        assert error["param"] == param, error


@pytest.mark.parametrize(("metadata", "param", "code"), METADATA_VIOLATIONS)
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_create_rejects_bad_metadata(
    http: httpx.Client, fake: FakeBackend, metadata: Any, param: str, code: str, stream: bool
) -> None:
    body = {"model": "fake-model", "messages": USER, "store": True, "metadata": metadata, "stream": stream}
    with unchanged(http, fake):
        resp = http.post("/v1/chat/completions", json=body)
        assert_error(resp, 400, param=param, code=code, type_="invalid_request_error")


@pytest.mark.parametrize(
    "metadata",
    [
        pytest.param("team=a", id="string"),
        pytest.param(["a"], id="array"),
        pytest.param({"": "v"}, id="empty-key"),
    ],
)
def test_create_rejects_metadata_of_wrong_shape(http: httpx.Client, fake: FakeBackend, metadata: Any) -> None:
    body = {"model": "fake-model", "messages": USER, "store": True, "metadata": metadata}
    with unchanged(http, fake):
        assert_error(http.post("/v1/chat/completions", json=body), 400, param="metadata")


@pytest.mark.parametrize("store", [{"store": False}, {}], ids=["store-false", "store-absent"])
def test_create_metadata_needs_store(http: httpx.Client, fake: FakeBackend, store: dict[str, Any]) -> None:
    body = {"model": "fake-model", "messages": USER, "metadata": {"team": "a"}, **store}
    with unchanged(http, fake):
        resp = http.post("/v1/chat/completions", json=body)
        error = assert_error(resp, 400, param="metadata", type_="invalid_request_error")
    assert error["message"] == ONLY_WHEN_STORED


def test_create_metadata_needs_store_through_sdk(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="fake-model", messages=USER, metadata={"team": "a"})
    assert caught.value.status_code == 400
    assert caught.value.param == "metadata"
    assert caught.value.body == {
        "message": ONLY_WHEN_STORED, "type": "invalid_request_error", "param": "metadata",
        "code": caught.value.code,
    }  # fmt: skip


def test_create_metadata_at_the_limits_is_accepted(http: httpx.Client) -> None:
    metadata = {**{f"k{i}": "v" for i in range(15)}, KEY64: "x" * 512}
    doc = create(http, store=True, metadata=metadata)
    got = http.get(f"/v1/chat/completions/{doc['id']}")
    assert got.status_code == 200 and got.json()["metadata"] == metadata


@pytest.fixture(scope="module")
def store_default_server(fake: FakeBackend) -> Iterator[Storegate]:
    sg = Storegate(fake.url, args=["--store-default"]).start()
    yield sg
    sg.stop()


def test_metadata_without_store_is_accepted_with_store_default(store_default_server: Storegate) -> None:
    with store_default_server.http() as h:
        doc = create(h, metadata={"team": "a"})
        got = h.get(f"/v1/chat/completions/{doc['id']}")
        assert got.status_code == 200 and got.json()["metadata"] == {"team": "a"}
        body = {"model": "fake-model", "messages": USER, "metadata": {"team": "a"}, "store": False}
        resp = h.post("/v1/chat/completions", json=body)
        assert_error(resp, 400, param="metadata")
        assert resp.json()["error"]["message"] == ONLY_WHEN_STORED


# --- update and the list filter -----------------------------------------------------------------------


@pytest.mark.parametrize(("metadata", "param", "code"), METADATA_VIOLATIONS)
def test_update_rejects_bad_metadata(
    http: httpx.Client, stored_id: str, metadata: Any, param: str, code: str
) -> None:
    resp = http.post(f"/v1/chat/completions/{stored_id}", json={"metadata": metadata})
    assert_error(resp, 400, param=param, code=code, type_="invalid_request_error")
    assert http.get(f"/v1/chat/completions/{stored_id}").json()["metadata"] == {"team": "a"}


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        pytest.param(_body(metadata={"team": "b"}, store=True), ANY, id="extra-key"),
        pytest.param(_body(metadata={"team": "b"}, model="fake-model"), ANY, id="extra-model"),
        pytest.param(_body(), "metadata", id="empty-object"),
        pytest.param(_body(tags={"team": "b"}), ANY, id="no-metadata"),
        pytest.param(_body(metadata="team=b"), "metadata", id="metadata-string"),
        pytest.param(b"{not json", ANY, id="invalid-json"),
        pytest.param(b'[{"metadata": {}}]', ANY, id="json-array"),
    ],
)
def test_update_rejects_bad_body(http: httpx.Client, stored_id: str, raw: bytes, param: object) -> None:
    resp = post_raw(http, f"/v1/chat/completions/{stored_id}", raw)
    assert_error(resp, 400, param=param, type_="invalid_request_error")
    assert http.get(f"/v1/chat/completions/{stored_id}").json()["metadata"] == {"team": "a"}


@pytest.mark.parametrize(
    ("params", "param", "code"),
    [
        pytest.param(FILTER_17, "metadata", "object_above_max_properties", id="17-keys"),
        pytest.param({f"metadata[{KEY65}]": "v"}, "metadata", "string_above_max_length", id="65-char-key"),
        pytest.param(
            {"metadata[team]": "x" * 513}, "metadata.team", "string_above_max_length", id="513-value"
        ),
        # a filter in neither form (metadata[k]=v, k=v) must not answer the unfiltered list
        pytest.param({"metadata": "team"}, "metadata", "invalid_value", id="bare-metadata"),
        pytest.param({"metadata": "team,a"}, "metadata", "invalid_value", id="unexploded-metadata"),
        pytest.param(
            [("metadata", "team"), ("metadata", "")], "metadata", "invalid_value", id="metadata-twice"
        ),
    ],
)
def test_list_rejects_bad_metadata_filter(http: httpx.Client, params: Any, param: str, code: str) -> None:
    resp = http.get("/v1/chat/completions", params=params)
    assert_error(resp, 400, param=param, code=code, type_="invalid_request_error")


# --- unknown, malformed, deleted and unstored ids -----------------------------------------------------


@pytest.fixture(params=["unknown", "not-an-id", "chatcmpl-123", "deleted", "unstored"])
def missing_id(request: pytest.FixtureRequest) -> str:
    if request.param in ("deleted", "unstored"):
        return str(request.getfixturevalue(f"{request.param}_id"))
    return UNKNOWN_ID if request.param == "unknown" else str(request.param)


@pytest.mark.parametrize(
    ("method", "suffix", "body"),
    [
        ("GET", "", None),
        ("POST", "", {"metadata": {"team": "b"}}),
        ("DELETE", "", None),
        ("GET", "/messages", None),
    ],
    ids=["get", "update", "delete", "messages"],
)
def test_missing_completion_is_404(
    http: httpx.Client, missing_id: str, method: str, suffix: str, body: dict[str, Any] | None
) -> None:
    resp = http.request(method, f"/v1/chat/completions/{missing_id}{suffix}", json=body)
    assert resp.status_code == 404, resp.text
    assert resp.json() == not_found_body(missing_id)


def test_missing_completion_through_sdk(client: openai.OpenAI, deleted_id: str) -> None:
    for call in (
        lambda: client.chat.completions.retrieve(deleted_id),
        lambda: client.chat.completions.update(deleted_id, metadata={"a": "b"}),
        lambda: client.chat.completions.delete(deleted_id),
        lambda: client.chat.completions.messages.list(deleted_id),
    ):
        with pytest.raises(openai.NotFoundError) as caught:
            call()
        assert caught.value.body == not_found_body(deleted_id)["error"]


# --- paging parameters --------------------------------------------------------------------------------


PAGING_ERRORS = [
    pytest.param({"limit": "0"}, "limit", "integer_below_min_value", id="limit-0"),
    pytest.param({"limit": "-5"}, "limit", "integer_below_min_value", id="limit-negative"),
    pytest.param({"limit": "101"}, "limit", "integer_above_max_value", id="limit-101"),
    pytest.param({"limit": "abc"}, "limit", ANY, id="limit-abc"),
    pytest.param({"limit": ""}, "limit", ANY, id="limit-empty"),
    pytest.param({"limit": " 2"}, "limit", "invalid_type", id="limit-space"),
    pytest.param({"limit": "+2"}, "limit", "invalid_type", id="limit-plus"),
    pytest.param({"limit": "1_0"}, "limit", "invalid_type", id="limit-underscore"),
    pytest.param({"limit": "²"}, "limit", "invalid_type", id="limit-superscript"),
    pytest.param({"limit": "1" * 5000}, "limit", "integer_above_max_value", id="limit-5000-digits"),
    pytest.param({"order": "sideways"}, "order", ANY, id="order-sideways"),
    pytest.param({"after": "not-an-id"}, "after", ANY, id="after-not-an-id"),
]


@pytest.mark.parametrize(("params", "param", "code"), PAGING_ERRORS)
def test_list_rejects_bad_paging(
    http: httpx.Client, params: dict[str, str], param: str, code: object
) -> None:
    resp = http.get("/v1/chat/completions", params=params)
    assert_error(resp, 400, param=param, code=code, type_="invalid_request_error")


@pytest.mark.parametrize(("params", "param", "code"), PAGING_ERRORS)
def test_messages_rejects_bad_paging(
    http: httpx.Client, stored_id: str, params: dict[str, str], param: str, code: object
) -> None:
    resp = http.get(f"/v1/chat/completions/{stored_id}/messages", params=params)
    assert_error(resp, 400, param=param, code=code, type_="invalid_request_error")


# --- routes, methods, body size ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/nope"),
        ("GET", "/nope"),
        ("POST", "/v1/completions"),
        ("GET", "/v1/chat/completions/x/y/z"),
        ("GET", "/v1/chat"),
    ],
)
def test_unknown_route_is_404(http: httpx.Client, method: str, path: str) -> None:
    assert_error(http.request(method, path), 404)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PUT", "/v1/chat/completions"),
        ("DELETE", "/v1/chat/completions"),
        ("PATCH", "/v1/chat/completions"),
        ("PUT", f"/v1/chat/completions/{UNKNOWN_ID}"),
        ("PATCH", f"/v1/chat/completions/{UNKNOWN_ID}"),
        ("POST", f"/v1/chat/completions/{UNKNOWN_ID}/messages"),
        ("POST", "/healthz"),
    ],
)
def test_wrong_method_is_405(http: httpx.Client, fake: FakeBackend, method: str, path: str) -> None:
    with unchanged(http, fake):
        resp = http.request(method, path, json={"model": "fake-model", "messages": USER, "store": True})
        assert_error(resp, 405, code="method_not_supported")
    allowed = {m.strip() for m in resp.headers["Allow"].split(",")}
    assert method not in allowed and allowed & {"GET", "POST", "DELETE"}, allowed


@pytest.fixture(scope="module")
def small_fake() -> Iterator[FakeBackend]:
    with FakeBackend() as backend:
        yield backend


@pytest.fixture(scope="module")
def small_server(small_fake: FakeBackend) -> Iterator[Storegate]:
    sg = Storegate(small_fake.url, args=["--max-body-bytes", "2048"]).start()
    yield sg
    sg.stop()


def test_body_over_limit_is_413(small_server: Storegate, small_fake: FakeBackend) -> None:
    big = [{"role": "user", "content": "x" * 4000}]
    with small_server.http() as h, unchanged(h, small_fake):
        resp = h.post("/v1/chat/completions", json={"model": "fake-model", "messages": big, "store": True})
        assert_error(resp, 413)
        chunked = h.post(
            "/v1/chat/completions",
            content=iter([_body(model="fake-model", messages=big, store=True)]),
            headers={"Content-Type": "application/json"},
        )
        assert_error(chunked, 413)
    with small_server.http() as h:
        small = create(h, store=True)
        resp = h.post(f"/v1/chat/completions/{small['id']}", json={"metadata": {"k": "x" * 4000}})
        assert_error(resp, 413)
        assert h.get(f"/v1/chat/completions/{small['id']}").json()["metadata"] == {}
