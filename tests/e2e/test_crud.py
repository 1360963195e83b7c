"""One stored completion: its shape, retrieve, update, delete and its messages (CONTRACT.md "Ids and
order", "Listing" (stored objects), "One completion", "Messages").

The module runs its own storegate (fresh database) against the session's fake backend, so that a walk
over every stored completion sees only this module's; tests that filter tag their completions with a
metadata key of their own.
"""

from __future__ import annotations

import re
import time
from typing import Any
from uuid import uuid4

import httpx2 as httpx
import openai
import pytest

from tests.fakes.backend import CREATED as FAKE_CREATED
from tests.server import Storegate

BASE = "/v1/chat/completions"
ID_RE = re.compile(r"^chatcmpl-[0-9A-Za-z]{29}$")
ECHOED = (
    "tool_choice",
    "seed",
    "top_p",
    "temperature",
    "presence_penalty",
    "frequency_penalty",
    "input_user",
    "tools",
    "response_format",
    "service_tier",
)
USER_HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def server(own_server: Storegate) -> Storegate:
    """This module's own storegate (a fresh database of each kind): its lists see only its own rows."""
    return own_server


def tag() -> dict[str, str]:
    return {"run": uuid4().hex}


def not_found_body(cid: str) -> dict[str, Any]:
    return {
        "error": {
            "message": f"No chat completion found with id '{cid}'.",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    }


def post_create(http: httpx.Client, body: dict[str, Any]) -> httpx.Response:
    response = http.post(BASE, json=body)
    assert response.status_code == 200, response.text
    return response


def create(client: openai.OpenAI, metadata: dict[str, str] | None = None, text: str = "hi") -> Any:
    return client.chat.completions.create(
        model="fake-model", messages=[{"role": "user", "content": text}], store=True, metadata=metadata
    )


def get_json(http: httpx.Client, path: str, **params: Any) -> dict[str, Any]:
    response = http.get(path, params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def listed_by_metadata(http: httpx.Client, metadata: dict[str, str]) -> list[dict[str, Any]]:
    params = {f"metadata[{k}]": v for k, v in metadata.items()}
    page = get_json(http, BASE, limit=100, **params)
    assert page["has_more"] is False
    data: list[dict[str, Any]] = page["data"]
    return data


def all_listed_ids(http: httpx.Client, **filters: Any) -> list[str]:
    """Every id the list shows (every page, asc), with optional filters."""
    ids: list[str] = []
    after: str | None = None
    for _ in range(1000):
        params = dict(filters, limit=100)
        if after is not None:
            params["after"] = after
        page = get_json(http, BASE, **params)
        ids += [item["id"] for item in page["data"]]
        if not page["has_more"]:
            return ids
        after = page["last_id"]
    raise AssertionError("the list does not end")


def assert_gone(http: httpx.Client, cid: str) -> None:
    """Every endpoint of one completion answers the contract's 404 for `cid`."""
    expected = not_found_body(cid)
    for method, path, body in (
        ("GET", f"{BASE}/{cid}", None),
        ("GET", f"{BASE}/{cid}/messages", None),
        ("POST", f"{BASE}/{cid}", {"metadata": {"k": "v"}}),
        ("POST", f"{BASE}/{cid}", {"metadata": None}),
        ("DELETE", f"{BASE}/{cid}", None),
    ):
        response = http.request(method, path, json=body)
        assert response.status_code == 404, (method, path, response.status_code, response.text)
        assert response.json() == expected, (method, path)


# --- the stored object ---------------------------------------------------------------------------------


def test_stored_object_is_the_response_plus_request_settings(http: httpx.Client) -> None:
    meta = tag()
    tools = [
        {
            "type": "function",
            "function": {
                "name": "lookup",
                "description": "Look something up.",
                "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]},
            },
        }
    ]
    request = {
        "model": "fake-model",
        "messages": USER_HI,
        "store": True,
        "metadata": meta,
        "tools": tools,
        "tool_choice": "auto",
        "seed": 42,
        "top_p": 0.5,
        "temperature": 0.25,
        "presence_penalty": 0.125,
        "frequency_penalty": -0.5,
        "user": "user-1234",
        "response_format": {"type": "json_object"},
        "service_tier": "default",
    }
    response = post_create(http, request)
    received = response.json()
    request_id = response.headers["x-request-id"]
    assert request_id.startswith("req_")

    stored = get_json(http, f"{BASE}/{received['id']}")
    expected = received | {
        "metadata": meta,
        "request_id": request_id,
        "tool_choice": "auto",
        "seed": 42,
        "top_p": 0.5,
        "temperature": 0.25,
        "presence_penalty": 0.125,
        "frequency_penalty": -0.5,
        "input_user": "user-1234",
        "tools": tools,
        "response_format": {"type": "json_object"},
        "service_tier": "default",
    }
    assert stored == expected
    for key in ("id", "created", "model", "choices", "usage", "system_fingerprint"):
        assert stored[key] == received[key], key
    assert stored["model"] == "fake-model-2024"
    assert stored["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "lookup"

    (item,) = listed_by_metadata(http, meta)
    assert item == stored


def test_stored_object_without_settings(client: openai.OpenAI, http: httpx.Client) -> None:
    raw = client.chat.completions.with_raw_response.create(model="fake-model", messages=USER_HI, store=True)
    request_id = raw.headers.get("x-request-id")
    assert request_id is not None
    assert request_id.startswith("req_")
    received = raw.http_response.json()
    completion = raw.parse()

    stored = get_json(http, f"{BASE}/{completion.id}")
    assert stored == received | {"metadata": {}, "request_id": request_id} | dict.fromkeys(ECHOED)

    retrieved = client.chat.completions.retrieve(completion.id)
    assert retrieved.id == completion.id
    assert retrieved.created == completion.created
    assert retrieved.model == completion.model == "fake-model-2024"
    assert retrieved.choices == completion.choices
    assert retrieved.choices[0].message.content == "echo: hi"
    assert retrieved.usage == completion.usage
    assert retrieved.system_fingerprint == completion.system_fingerprint == "fp_fake"
    assert retrieved.metadata == {}

    listed = [
        item for item in get_json(http, BASE, limit=100, order="desc")["data"] if item["id"] == completion.id
    ]
    assert listed == [stored]


@pytest.mark.parametrize(
    "extra",
    [
        {"n": 2, "logprobs": True, "top_logprobs": 2},
        {"max_tokens": 1},
        {"model": "fake-model+refuse"},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "parts"}]}], "stop": ["x"]},
    ],
    ids=["n2-logprobs", "length", "refusal", "parts"],
)
def test_stored_object_equals_the_received_one(http: httpx.Client, extra: dict[str, Any]) -> None:
    meta = tag()
    response = post_create(
        http, {"model": "fake-model", "messages": USER_HI, "store": True, "metadata": meta} | extra
    )
    received = response.json()
    stored = get_json(http, f"{BASE}/{received['id']}")
    echoed = {key: stored[key] for key in ECHOED}
    assert echoed == dict.fromkeys(ECHOED)
    assert stored == received | {"metadata": meta, "request_id": response.headers["x-request-id"]} | echoed
    (item,) = listed_by_metadata(http, meta)
    assert item == stored


def test_list_items_and_retrieve_are_identical(client: openai.OpenAI, http: httpx.Client) -> None:
    meta = tag()
    ids = [create(client, meta | {"i": str(i)}, text=f"text {i}").id for i in range(3)]
    items = listed_by_metadata(http, meta)
    assert [item["id"] for item in items] == ids
    for item in items:
        assert item == get_json(http, f"{BASE}/{item['id']}")
        assert item["metadata"] == meta | {"i": str(ids.index(item["id"]))}
    sdk = client.chat.completions.list(metadata=meta)
    for listed in sdk.data:
        assert listed == client.chat.completions.retrieve(listed.id)


def test_created_is_storegates_clock(client: openai.OpenAI, http: httpx.Client) -> None:
    before = time.time()
    completion = create(client)
    after = time.time()
    assert completion.created != FAKE_CREATED
    assert int(before) <= completion.created <= int(after) + 1
    stored = get_json(http, f"{BASE}/{completion.id}")
    assert stored["created"] == completion.created


def test_ids_look_like_openais_and_are_distinct(client: openai.OpenAI, http: httpx.Client) -> None:
    ids: list[str] = []
    for i in range(10):
        ids.append(create(client, text=f"n{i}").id)
        ids.append(client.chat.completions.create(model="fake-model", messages=USER_HI, store=False).id)
        ids.append(post_create(http, {"model": "other-model", "messages": USER_HI}).json()["id"])
    for cid in ids:
        assert ID_RE.fullmatch(cid), cid
        assert "fake" not in cid, "the backend's own id never reaches the client"
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids), "ids sort in creation order"


@pytest.mark.parametrize("store", [False, None], ids=["store-false", "store-absent"])
def test_unstored_completions_are_invisible(
    client: openai.OpenAI, http: httpx.Client, store: bool | None
) -> None:
    body: dict[str, Any] = {"model": "fake-model", "messages": USER_HI}
    if store is not None:
        body["store"] = store
    received = post_create(http, body).json()
    cid = received["id"]
    assert ID_RE.fullmatch(cid)
    assert received["choices"][0]["message"]["content"] == "echo: hi"

    assert_gone(http, cid)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.retrieve(cid)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.messages.list(cid)
    assert cid not in all_listed_ids(http)
    assert cid not in all_listed_ids(http, model="fake-model")
    assert cid not in all_listed_ids(http, model="fake-model-2024")
    assert cid not in [c.id for c in client.chat.completions.list(order="desc", limit=100)]


def test_unknown_ids_are_404(http: httpx.Client) -> None:
    for cid in ("chatcmpl-" + "0" * 29, "chatcmpl-" + "z" * 29, "chatcmpl-abc", "not-an-id"):
        assert_gone(http, cid)


# --- update -----------------------------------------------------------------------------------------------


def test_update_replaces_metadata_as_a_whole(client: openai.OpenAI, http: httpx.Client) -> None:
    old = tag() | {"a": "1", "b": "2"}
    completion = create(client, old)
    before = get_json(http, f"{BASE}/{completion.id}")
    assert before["metadata"] == old

    new = tag() | {"c": "3"}
    updated = client.chat.completions.update(completion.id, metadata=new)
    assert updated.id == completion.id
    assert updated.metadata == new

    raw_after = get_json(http, f"{BASE}/{completion.id}")
    assert raw_after == before | {"metadata": new}
    assert client.chat.completions.retrieve(completion.id) == updated

    assert listed_by_metadata(http, old) == []
    assert listed_by_metadata(http, {"run": old["run"]}) == []
    assert listed_by_metadata(http, {"run": old["run"], "a": "1"}) == []
    assert [item["id"] for item in listed_by_metadata(http, new)] == [completion.id]
    assert [item["id"] for item in listed_by_metadata(http, {"c": "3", "run": new["run"]})] == [completion.id]


def test_update_returns_the_updated_object(http: httpx.Client) -> None:
    meta = tag()
    cid = post_create(
        http, {"model": "fake-model", "messages": USER_HI, "store": True, "metadata": meta}
    ).json()["id"]
    before = get_json(http, f"{BASE}/{cid}")
    new = {"x": "y", "run": meta["run"] + "-2"}
    response = http.post(f"{BASE}/{cid}", json={"metadata": new})
    assert response.status_code == 200, response.text
    assert response.json() == before | {"metadata": new}
    assert get_json(http, f"{BASE}/{cid}") == response.json()


@pytest.mark.parametrize("empty", [None, {}], ids=["null", "empty-object"])
def test_update_with_null_or_empty_clears_metadata(
    client: openai.OpenAI, http: httpx.Client, empty: dict[str, str] | None
) -> None:
    meta = tag() | {"k": "v"}
    completion = create(client, meta)
    response = http.post(f"{BASE}/{completion.id}", json={"metadata": empty})
    assert response.status_code == 200, response.text
    assert response.json()["metadata"] == {}
    assert get_json(http, f"{BASE}/{completion.id}")["metadata"] == {}
    assert listed_by_metadata(http, {"run": meta["run"]}) == []
    assert completion.id in all_listed_ids(http)


def test_update_with_the_sdk_to_none_clears_metadata(client: openai.OpenAI) -> None:
    meta = tag()
    completion = create(client, meta)
    updated = client.chat.completions.update(completion.id, metadata=None)
    assert updated.metadata == {}
    assert client.chat.completions.retrieve(completion.id).metadata == {}
    assert client.chat.completions.list(metadata=meta).data == []


def test_update_with_16_keys(client: openai.OpenAI, http: httpx.Client) -> None:
    run = uuid4().hex
    completion = create(client, {"run": run})
    sixteen = {"run": run} | {f"key{i:02d}": f"value {i}" for i in range(15)}
    assert len(sixteen) == 16
    updated = client.chat.completions.update(completion.id, metadata=sixteen)
    assert updated.metadata == sixteen
    assert get_json(http, f"{BASE}/{completion.id}")["metadata"] == sixteen
    assert [item["id"] for item in listed_by_metadata(http, sixteen)] == [completion.id]
    assert [item["id"] for item in listed_by_metadata(http, {"run": run, "key14": "value 14"})] == [
        completion.id
    ]


def test_update_with_long_key_and_value(client: openai.OpenAI, http: httpx.Client) -> None:
    run = uuid4().hex
    completion = create(client, {"run": run})
    meta = {"run": run, "k" * 64: "v" * 512}
    assert client.chat.completions.update(completion.id, metadata=meta).metadata == meta
    assert [item["id"] for item in listed_by_metadata(http, meta)] == [completion.id]


# --- delete -----------------------------------------------------------------------------------------------


def test_delete_returns_the_deleted_object(client: openai.OpenAI, http: httpx.Client) -> None:
    cid = create(client).id
    response = http.delete(f"{BASE}/{cid}")
    assert response.status_code == 200, response.text
    assert response.json() == {"object": "chat.completion.deleted", "id": cid, "deleted": True}

    cid = create(client).id
    deleted = client.chat.completions.delete(cid)
    assert deleted.id == cid
    assert deleted.deleted is True
    assert deleted.object == "chat.completion.deleted"


def test_deleted_completion_is_gone_everywhere(client: openai.OpenAI, http: httpx.Client) -> None:
    meta = tag()
    keep_before = create(client, meta, text="before").id
    doomed = create(client, meta | {"doomed": "yes"}, text="doomed").id
    keep_after = create(client, meta, text="after").id
    assert doomed in all_listed_ids(http, model="fake-model")

    client.chat.completions.delete(doomed)

    assert_gone(http, doomed)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.retrieve(doomed)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.messages.list(doomed)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.update(doomed, metadata={"a": "b"})
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.delete(doomed)

    assert [item["id"] for item in listed_by_metadata(http, meta)] == [keep_before, keep_after]
    assert listed_by_metadata(http, meta | {"doomed": "yes"}) == []
    assert listed_by_metadata(http, {"doomed": "yes"}) == []
    for model in ("fake-model", "fake-model-2024", None):
        ids = all_listed_ids(http) if model is None else all_listed_ids(http, model=model)
        assert doomed not in ids, model
        assert keep_before in ids
        assert keep_after in ids
    desc = [c.id for c in client.chat.completions.list(metadata=meta, order="desc")]
    assert desc == [keep_after, keep_before]
    # the survivors are intact
    assert get_json(http, f"{BASE}/{keep_before}")["choices"][0]["message"]["content"] == "echo: before"
    assert get_json(http, f"{BASE}/{keep_after}/messages")["data"][0]["content"] == "after"


# --- messages ---------------------------------------------------------------------------------------------

TOOL_CALLS = [
    {"id": "call_abc", "type": "function", "function": {"name": "lookup", "arguments": '{"q": "answer"}'}}
]
IMAGE_PART = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png", "detail": "low"}}
CONVERSATION: list[dict[str, Any]] = [
    {"role": "system", "content": "You are terse."},
    {"role": "developer", "content": "Answer in English."},
    {"role": "user", "content": "What is the answer?", "name": "alice"},
    {"role": "assistant", "content": None, "tool_calls": TOOL_CALLS},
    {"role": "tool", "tool_call_id": "call_abc", "content": "42"},
    {"role": "assistant", "content": "The answer is 42.", "name": "helper"},
    {
        "role": "user",
        "content": [{"type": "text", "text": "Look at"}, IMAGE_PART, {"type": "text", "text": "this cat."}],
    },
    {"role": "user", "content": "  keep  spacing\nand newlines  "},
]


def store_conversation(http: httpx.Client, messages: list[dict[str, Any]]) -> str:
    response = post_create(http, {"model": "fake-model", "messages": messages, "store": True})
    cid: str = response.json()["id"]
    return cid


def test_message_items(http: httpx.Client) -> None:
    cid = store_conversation(http, CONVERSATION)
    page = get_json(http, f"{BASE}/{cid}/messages")
    items = page["data"]
    assert page["object"] == "list"
    assert page["has_more"] is False
    assert page["first_id"] == f"{cid}-0"
    assert page["last_id"] == f"{cid}-{len(CONVERSATION) - 1}"
    assert [item["id"] for item in items] == [f"{cid}-{i}" for i in range(len(CONVERSATION))]
    assert [item["role"] for item in items] == [m["role"] for m in CONVERSATION]

    expected_content = [
        "You are terse.",
        "Answer in English.",
        "What is the answer?",
        None,
        "42",
        "The answer is 42.",
        "Look at\nthis cat.",
        "  keep  spacing\nand newlines  ",
    ]
    expected_names = [None, None, "alice", None, None, "helper", None, None]
    for item, content, name in zip(items, expected_content, expected_names, strict=True):
        assert item["content"] == content, item["id"]
        assert item["name"] == name, item["id"]
        assert "refusal" in item
        assert item["refusal"] is None, item["id"]
        assert "content_parts" in item
        assert "name" in item

    assert items[6]["content_parts"] == CONVERSATION[6]["content"]
    for i, item in enumerate(items):
        if i != 6:
            assert item["content_parts"] is None, item["id"]

    assert items[3]["tool_calls"] == TOOL_CALLS
    assert items[4]["tool_call_id"] == "call_abc"
    for i, item in enumerate(items):
        if i != 3:
            assert item.get("tool_calls") is None, item["id"]
        if i != 4:
            assert item.get("tool_call_id") is None, item["id"]


def test_message_content_parts_keep_only_text_and_image(http: httpx.Client) -> None:
    audio = {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}
    parts = [{"type": "text", "text": "one"}, audio, IMAGE_PART, {"type": "text", "text": "two"}]
    cid = store_conversation(http, [{"role": "user", "content": parts}])
    (item,) = get_json(http, f"{BASE}/{cid}/messages")["data"]
    assert item["content"] == "one\ntwo"
    assert item["content_parts"] == [parts[0], IMAGE_PART, parts[3]]
    assert item["role"] == "user"


def test_messages_through_the_sdk(client: openai.OpenAI, http: httpx.Client) -> None:
    cid = store_conversation(http, CONVERSATION)
    page = client.chat.completions.messages.list(cid)
    assert [m.id for m in page.data] == [f"{cid}-{i}" for i in range(len(CONVERSATION))]
    assert [m.role for m in page.data] == [m["role"] for m in CONVERSATION]
    assert page.data[6].content == "Look at\nthis cat."
    assert page.data[6].content_parts is not None
    assert len(page.data[6].content_parts) == 3
    assert page.data[3].tool_calls is not None
    assert page.data[3].tool_calls[0].id == "call_abc"
    assert page.has_more is False


SEVEN: list[dict[str, Any]] = [
    {"role": "system", "content": "s0"},
    {"role": "user", "content": "u1"},
    {"role": "assistant", "content": "a2"},
    {"role": "user", "content": "u3"},
    {"role": "assistant", "content": "a4"},
    {"role": "user", "content": "u5"},
    {"role": "user", "content": "u6"},
]


@pytest.mark.parametrize("order", ["asc", "desc"])
def test_messages_paging_limit_2(http: httpx.Client, order: str) -> None:
    cid = store_conversation(http, SEVEN)
    indexes = list(range(7)) if order == "asc" else list(range(6, -1, -1))
    expected = [f"{cid}-{i}" for i in indexes]
    pages: list[dict[str, Any]] = []
    after: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 2, "order": order}
        if after is not None:
            params["after"] = after
        page = get_json(http, f"{BASE}/{cid}/messages", **params)
        pages.append(page)
        assert len(pages) <= 4
        ids = [item["id"] for item in page["data"]]
        assert page["first_id"] == ids[0]
        assert page["last_id"] == ids[-1]
        if not page["has_more"]:
            break
        after = page["last_id"]
    assert [len(p["data"]) for p in pages] == [2, 2, 2, 1]
    assert [p["has_more"] for p in pages] == [True, True, True, False]
    seen = [item for p in pages for item in p["data"]]
    assert [item["id"] for item in seen] == expected
    assert [item["content"] for item in seen] == [SEVEN[i]["content"] for i in indexes]
    assert [item["role"] for item in seen] == [SEVEN[i]["role"] for i in indexes]

    # past the last one: an empty page
    empty = get_json(http, f"{BASE}/{cid}/messages", limit=2, order=order, after=expected[-1])
    assert empty == {"object": "list", "data": [], "first_id": None, "last_id": None, "has_more": False}


@pytest.mark.parametrize("order", ["asc", "desc"])
def test_messages_paging_with_the_sdk(client: openai.OpenAI, http: httpx.Client, order: str) -> None:
    cid = store_conversation(http, SEVEN)
    indexes = list(range(7)) if order == "asc" else list(range(6, -1, -1))
    expected = [f"{cid}-{i}" for i in indexes]
    messages = client.chat.completions.messages
    if order == "asc":
        first = messages.list(cid, limit=2)
        second = messages.list(cid, limit=2, after=expected[1])
        middle = messages.list(cid, limit=3, after=expected[2])
    else:
        first = messages.list(cid, limit=2, order="desc")
        second = messages.list(cid, limit=2, order="desc", after=expected[1])
        middle = messages.list(cid, limit=3, order="desc", after=expected[2])
    assert [m.id for m in first.data] == expected[:2]
    assert first.has_more is True
    assert [m.id for m in second.data] == expected[2:4]
    assert [m.id for m in middle.data] == expected[3:6]
    assert middle.has_more is True

    walked = [
        m.id
        for m in (
            messages.list(cid, limit=2) if order == "asc" else messages.list(cid, limit=2, order="desc")
        )
    ]
    assert walked == expected


def test_messages_default_limit_20(client: openai.OpenAI, http: httpx.Client) -> None:
    conversation = [
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"message {i}"} for i in range(25)
    ]
    cid = store_conversation(http, conversation)
    page = get_json(http, f"{BASE}/{cid}/messages")
    assert [item["id"] for item in page["data"]] == [f"{cid}-{i}" for i in range(20)]
    assert [item["content"] for item in page["data"]] == [f"message {i}" for i in range(20)]
    assert page["has_more"] is True
    assert page["first_id"] == f"{cid}-0"
    assert page["last_id"] == f"{cid}-19"

    rest = get_json(http, f"{BASE}/{cid}/messages", after=page["last_id"])
    assert [item["id"] for item in rest["data"]] == [f"{cid}-{i}" for i in range(20, 25)]
    assert rest["has_more"] is False

    desc = get_json(http, f"{BASE}/{cid}/messages", order="desc")
    assert [item["id"] for item in desc["data"]] == [f"{cid}-{i}" for i in range(24, 4, -1)]
    assert desc["has_more"] is True

    sdk = client.chat.completions.messages.list(cid)
    assert len(sdk.data) == 20
    assert sdk.has_more is True
    assert [m.id for m in client.chat.completions.messages.list(cid)] == [f"{cid}-{i}" for i in range(25)]
