"""GET /v1/chat/completions: order, limit, cursors, filters (CONTRACT.md "Ids and order", "Listing").

The module runs its own storegate (fresh database) against the session's fake backend, and every test
but the unfiltered one tags its completions with a metadata key of its own, so tests never see each
other's completions.
"""

from __future__ import annotations

import itertools
import time
from typing import Any
from uuid import uuid4

import httpx2 as httpx
import openai
import pytest

from tests.fakes import FakeBackend
from tests.server import Storegate

LIST = "/v1/chat/completions"
MSG = [{"role": "user", "content": "generated"}]


@pytest.fixture(scope="module")
def server(own_server: Storegate) -> Storegate:
    """This module's own storegate (a fresh database of each kind): its lists see only its own rows."""
    return own_server


def run_tag() -> dict[str, str]:
    return {"run": uuid4().hex}


def create(
    client: openai.OpenAI,
    metadata: dict[str, str] | None = None,
    *,
    model: str = "fake-model",
    text: str = "hi",
) -> Any:
    return client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": text}], store=True, metadata=metadata
    )


def create_many(client: openai.OpenAI, count: int, metadata: dict[str, str] | None = None) -> list[str]:
    return [create(client, metadata, text=f"message {i}").id for i in range(count)]


def raw_list(http: httpx.Client, **params: Any) -> dict[str, Any]:
    response = http.get(LIST, params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def ids_of(page: dict[str, Any]) -> list[str]:
    return [item["id"] for item in page["data"]]


def assert_page_cursors(page: dict[str, Any]) -> None:
    ids = ids_of(page)
    if ids:
        assert page["first_id"] == ids[0]
        assert page["last_id"] == ids[-1]
    else:
        assert page["first_id"] is None
        assert page["last_id"] is None
    assert page["object"] == "list"


def walk(http: httpx.Client, order: str, limit: int, **filters: Any) -> list[dict[str, Any]]:
    """Every page of a filtered list, following last_id; checks each page's cursors and has_more."""
    pages: list[dict[str, Any]] = []
    after: str | None = None
    while True:
        params = dict(filters, limit=limit, order=order)
        if after is not None:
            params["after"] = after
        page = raw_list(http, **params)
        assert_page_cursors(page)
        pages.append(page)
        assert len(pages) < 100, "pagination does not end"
        if not page["has_more"]:
            return pages
        assert len(page["data"]) == limit, "a page with has_more true is full"
        after = page["last_id"]


def meta_params(metadata: dict[str, str]) -> dict[str, str]:
    return {f"metadata[{k}]": v for k, v in metadata.items()}


# --- default order and limit, has_more, first_id / last_id ------------------------------------------


def test_default_order_asc_and_default_limit_20(fake: FakeBackend) -> None:
    fresh = Storegate(fake.url).start()
    try:
        with fresh.client() as client, fresh.http() as http:
            created = create_many(client, 25)
            page = raw_list(http)
            assert ids_of(page) == created[:20]
            assert page["has_more"] is True
            assert page["first_id"] == created[0]
            assert page["last_id"] == created[19]

            rest = raw_list(http, after=page["last_id"])
            assert ids_of(rest) == created[20:]
            assert rest["has_more"] is False
            assert rest["first_id"] == created[20]
            assert rest["last_id"] == created[24]

            desc = raw_list(http, order="desc")
            assert ids_of(desc) == created[::-1][:20]
            assert desc["has_more"] is True

            sdk = client.chat.completions.list()
            assert [c.id for c in sdk.data] == created[:20]
            assert sdk.has_more is True
    finally:
        fresh.stop()


def test_empty_page_has_null_cursors(client: openai.OpenAI, http: httpx.Client) -> None:
    tag = run_tag()
    page = raw_list(http, **meta_params(tag))
    assert page == {"object": "list", "data": [], "first_id": None, "last_id": None, "has_more": False}

    sdk = client.chat.completions.list(metadata=tag)
    assert sdk.data == []
    assert sdk.has_more is False
    assert sdk.first_id is None
    assert sdk.last_id is None


def test_empty_page_after_the_last_item(http: httpx.Client, client: openai.OpenAI) -> None:
    tag = run_tag()
    created = create_many(client, 2, tag)
    page = raw_list(http, after=created[-1], **meta_params(tag))
    assert page == {"object": "list", "data": [], "first_id": None, "last_id": None, "has_more": False}
    page = raw_list(http, after=created[0], order="desc", **meta_params(tag))
    assert page == {"object": "list", "data": [], "first_id": None, "last_id": None, "has_more": False}


def test_has_more_exactly_at_the_limit(http: httpx.Client, client: openai.OpenAI) -> None:
    tag = run_tag()
    created = create_many(client, 4, tag)
    full = raw_list(http, limit=4, **meta_params(tag))
    assert ids_of(full) == created
    assert full["has_more"] is False
    assert (full["first_id"], full["last_id"]) == (created[0], created[-1])

    short = raw_list(http, limit=3, **meta_params(tag))
    assert ids_of(short) == created[:3]
    assert short["has_more"] is True
    assert (short["first_id"], short["last_id"]) == (created[0], created[2])

    one = raw_list(http, limit=1, order="desc", **meta_params(tag))
    assert ids_of(one) == [created[-1]]
    assert one["has_more"] is True
    assert one["first_id"] == one["last_id"] == created[-1]


# --- pagination -----------------------------------------------------------------------------------------


def test_pagination_asc_limit_3_sees_every_completion_once(http: httpx.Client, client: openai.OpenAI) -> None:
    tag = run_tag()
    created = create_many(client, 10, tag)
    assert created == sorted(created), "ids sort in creation order"
    assert len(set(created)) == len(created)

    pages = walk(http, "asc", 3, **meta_params(tag))
    assert [len(p["data"]) for p in pages] == [3, 3, 3, 1]
    assert [p["has_more"] for p in pages] == [True, True, True, False]
    seen = [i for p in pages for i in ids_of(p)]
    assert seen == created
    assert all(a < b for a, b in itertools.pairwise(seen)), "ids strictly increasing in asc"


def test_pagination_desc_limit_3_sees_every_completion_once(
    http: httpx.Client, client: openai.OpenAI
) -> None:
    tag = run_tag()
    created = create_many(client, 10, tag)

    pages = walk(http, "desc", 3, **meta_params(tag))
    assert [len(p["data"]) for p in pages] == [3, 3, 3, 1]
    assert [p["has_more"] for p in pages] == [True, True, True, False]
    seen = [i for p in pages for i in ids_of(p)]
    assert seen == created[::-1]
    assert all(a > b for a, b in itertools.pairwise(seen)), "ids strictly decreasing in desc"


def test_pagination_with_the_sdk_cursor(client: openai.OpenAI) -> None:
    tag = run_tag()
    created = create_many(client, 7, tag)
    seen: list[str] = []
    after: str | None = None
    for _ in range(10):
        if after is None:
            page = client.chat.completions.list(limit=3, metadata=tag, order="asc")
        else:
            page = client.chat.completions.list(limit=3, metadata=tag, order="asc", after=after)
        seen += [c.id for c in page.data]
        if not page.has_more:
            break
        after = page.last_id
    assert seen == created


@pytest.mark.parametrize("order", ["asc", "desc"])
def test_sdk_auto_pagination_visits_all(client: openai.OpenAI, order: str) -> None:
    tag = run_tag()
    created = create_many(client, 5, tag)
    if order == "asc":
        seen = [c.id for c in client.chat.completions.list(limit=2, metadata=tag)]
        assert seen == created
    else:
        seen = [c.id for c in client.chat.completions.list(limit=2, metadata=tag, order="desc")]
        assert seen == created[::-1]


@pytest.mark.parametrize("order", ["asc", "desc"])
def test_after_an_id_deleted_since_the_previous_page(
    client: openai.OpenAI, http: httpx.Client, order: str
) -> None:
    tag = run_tag()
    created = create_many(client, 7, tag)
    expected = created if order == "asc" else created[::-1]

    first = raw_list(http, limit=3, order=order, **meta_params(tag))
    assert ids_of(first) == expected[:3]
    assert first["has_more"] is True
    cursor = first["last_id"]
    deleted = client.chat.completions.delete(cursor)
    assert deleted.deleted is True

    second = raw_list(http, limit=3, order=order, after=cursor, **meta_params(tag))
    assert ids_of(second) == expected[3:6]
    assert second["has_more"] is True
    third = raw_list(http, limit=3, order=order, after=second["last_id"], **meta_params(tag))
    assert ids_of(third) == expected[6:]
    assert third["has_more"] is False

    # the same through the SDK
    if order == "asc":
        sdk = client.chat.completions.list(limit=3, metadata=tag, after=cursor)
    else:
        sdk = client.chat.completions.list(limit=3, metadata=tag, after=cursor, order="desc")
    assert [c.id for c in sdk.data] == expected[3:6]


def test_after_a_deleted_id_without_filters(fake: FakeBackend) -> None:
    """The cursor survives a delete on an unfiltered list too (no metadata/model index involved)."""
    fresh = Storegate(fake.url).start()
    try:
        with fresh.client() as client, fresh.http() as http:
            created = create_many(client, 5)
            client.chat.completions.delete(created[1])
            page = raw_list(http, after=created[1])
            assert ids_of(page) == created[2:]
            page = raw_list(http, after=created[1], order="desc")
            assert ids_of(page) == created[:1]
    finally:
        fresh.stop()


# --- model filter -------------------------------------------------------------------------------------


def test_model_filter_matches_requested_and_reported_model(client: openai.OpenAI, http: httpx.Client) -> None:
    tag = run_tag()
    fake_ids = [create(client, tag, model="fake-model", text=f"f{i}").id for i in range(2)]
    other_ids = [create(client, tag, model="other-model", text=f"o{i}").id for i in range(2)]
    third = create(client, tag, model="fake-model")
    assert third.model == "fake-model-2024"
    fake_ids.append(third.id)

    def listed(model: str) -> list[str]:
        return [c.id for c in client.chat.completions.list(model=model, metadata=tag, limit=100)]

    assert listed("fake-model") == fake_ids
    assert listed("fake-model-2024") == fake_ids
    assert listed("other-model") == other_ids
    assert listed("other-model-2024") == other_ids
    for nothing in ("fake", "fake-model-", "FAKE-MODEL", "fake-model-2024 ", "nonexistent-model"):
        assert listed(nothing) == [], nothing
        page = raw_list(http, model=nothing, **meta_params(tag))
        assert page["data"] == []
        assert page["first_id"] is None
        assert page["last_id"] is None


def test_model_filter_when_requested_and_reported_names_differ(client: openai.OpenAI) -> None:
    tag = run_tag()
    slow = create(client, tag, model="fake-model+slow")
    assert slow.model == "fake-model-2024"
    plain = create(client, tag, model="fake-model")

    def listed(model: str) -> list[str]:
        return [c.id for c in client.chat.completions.list(model=model, metadata=tag)]

    assert listed("fake-model+slow") == [slow.id]
    assert listed("fake-model") == [plain.id]
    assert listed("fake-model-2024") == [slow.id, plain.id]
    assert listed("fake-model+") == []


def test_model_filter_pages_through(client: openai.OpenAI, http: httpx.Client) -> None:
    tag = run_tag()
    mixed: list[tuple[str, str]] = []
    for i in range(7):
        model = "fake-model" if i % 2 == 0 else "other-model"
        mixed.append((model, create(client, tag, model=model, text=f"m{i}").id))
    fakes = [cid for model, cid in mixed if model == "fake-model"]
    pages = walk(http, "asc", 2, model="fake-model-2024", **meta_params(tag))
    assert [i for p in pages for i in ids_of(p)] == fakes
    pages = walk(http, "desc", 2, model="fake-model", **meta_params(tag))
    assert [i for p in pages for i in ids_of(p)] == fakes[::-1]


# --- metadata filter ---------------------------------------------------------------------------------


def test_metadata_filter_one_key(client: openai.OpenAI) -> None:
    run = uuid4().hex
    red = create(client, {"run": run, "color": "red"}).id
    blue = create(client, {"run": run, "color": "blue"}).id
    plain = create(client, {"run": run}).id

    def listed(metadata: dict[str, str]) -> list[str]:
        return [c.id for c in client.chat.completions.list(metadata=metadata, limit=100)]

    assert listed({"run": run}) == [red, blue, plain]
    assert listed({"run": run, "color": "red"}) == [red]
    assert listed({"run": run, "color": "blue"}) == [blue]


def test_metadata_filter_all_keys_must_match(client: openai.OpenAI) -> None:
    run = uuid4().hex
    both = create(client, {"run": run, "a": "1", "b": "2"}).id
    only_a = create(client, {"run": run, "a": "1", "b": "3"}).id
    only_b = create(client, {"run": run, "a": "4", "b": "2"}).id
    create(client, {"run": run, "a": "1"})

    def listed(metadata: dict[str, str]) -> list[str]:
        return [c.id for c in client.chat.completions.list(metadata=metadata, limit=100)]

    assert listed({"run": run, "a": "1", "b": "2"}) == [both]
    assert listed({"run": run, "a": "1", "b": "3"}) == [only_a]
    assert listed({"run": run, "a": "4", "b": "2"}) == [only_b]
    assert listed({"run": run, "a": "4", "b": "3"}) == []
    assert listed({"run": run, "b": "2"}) == [both, only_b]


def test_metadata_filter_value_mismatch(client: openai.OpenAI, http: httpx.Client) -> None:
    run = uuid4().hex
    create(client, {"run": run, "env": "prod"})

    def listed(metadata: dict[str, str]) -> list[str]:
        return [c.id for c in client.chat.completions.list(metadata=metadata, limit=100)]

    for value in ("Prod", "PROD", "pro", "prod ", " prod", "production", "", "prod%"):
        assert listed({"run": run, "env": value}) == [], repr(value)
    assert listed({"run": run, "missing-key": "prod"}) == []
    assert listed({"run": run, "Env": "prod"}) == []
    page = raw_list(http, **meta_params({"run": run, "env": "staging"}))
    assert page == {"object": "list", "data": [], "first_id": None, "last_id": None, "has_more": False}


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("clé ünïcode ✓", "välue 日本語 🚀"),
        ('say "hi"', 'it\'s "quoted"'),
        ("key with  spaces", " value with spaces "),
        ("a&b=c+d%20e?f#g", "x&y=z+w%20v?u#t"),
        ("a[b]c", "[v]"),
    ],
    ids=["unicode", "quotes", "spaces", "url-specials", "brackets"],
)
def test_metadata_filter_unusual_keys_and_values(
    client: openai.OpenAI, http: httpx.Client, key: str, value: str
) -> None:
    run = uuid4().hex
    hit = create(client, {"run": run, key: value}).id
    create(client, {"run": run, key: value + "x"})
    create(client, {"run": run, "other": value})

    sdk = [c.id for c in client.chat.completions.list(metadata={"run": run, key: value})]
    assert sdk == [hit]
    raw = raw_list(http, **meta_params({"run": run, key: value}))
    assert ids_of(raw) == [hit]
    assert raw["data"][0]["metadata"] == {"run": run, key: value}


# --- created_after / created_before (operator extension) ----------------------------------------------


def test_created_after_and_before_are_exclusive(client: openai.OpenAI, http: httpx.Client) -> None:
    tag = run_tag()
    first = create(client, tag)
    # wait for storegate's clock to reach the next second, then create the second completion
    second = create(client, tag)
    deadline = time.monotonic() + 3
    while second.created <= first.created:
        assert time.monotonic() < deadline, "storegate's clock does not advance"
        client.chat.completions.delete(second.id)
        time.sleep(0.05)
        second = create(client, tag)
    a, b = first.created, second.created
    assert a < b

    def listed(**bounds: int) -> list[str]:
        return ids_of(raw_list(http, **bounds, **meta_params(tag)))

    # created_after=T keeps created > T
    assert listed(created_after=a - 1) == [first.id, second.id]
    assert listed(created_after=a) == [second.id]
    assert listed(created_after=b - 1) == [second.id]
    assert listed(created_after=b) == []
    # created_before=T keeps created < T
    assert listed(created_before=b + 1) == [first.id, second.id]
    assert listed(created_before=b) == [first.id]
    assert listed(created_before=a + 1) == [first.id]
    assert listed(created_before=a) == []
    # both together
    assert listed(created_after=a - 1, created_before=b + 1) == [first.id, second.id]
    assert listed(created_after=a - 1, created_before=b) == [first.id]
    assert listed(created_after=a, created_before=b + 1) == [second.id]
    assert listed(created_after=a, created_before=b) == []
    # with the other list parameters
    page = raw_list(http, created_after=a - 1, order="desc", limit=1, **meta_params(tag))
    assert ids_of(page) == [second.id]
    assert page["has_more"] is True
    page = raw_list(http, created_after=a - 1, after=first.id, **meta_params(tag))
    assert ids_of(page) == [second.id]
    assert page["has_more"] is False


def test_created_bounds_on_one_completion(client: openai.OpenAI, http: httpx.Client) -> None:
    tag = run_tag()
    done = create(client, tag)
    c = done.created

    def listed(**bounds: int) -> list[str]:
        return ids_of(raw_list(http, **bounds, **meta_params(tag)))

    assert listed(created_before=c + 1) == [done.id]
    assert listed(created_before=c) == []
    assert listed(created_after=c) == []
    assert listed(created_after=c - 1) == [done.id]
    assert listed(created_after=0) == [done.id]
    assert listed(created_before=int(time.time()) + 3600) == [done.id]


def test_metadata_filter_as_a_spec_generated_client_sends_it(
    client: openai.OpenAI, http: httpx.Client
) -> None:
    """OpenAPI's default serialization of the spec's `metadata` object query parameter is form style,
    exploded: `?team=a&run=x`, with no `metadata[...]` around the keys."""
    run = uuid4().hex
    made = client.chat.completions.create(model="fake-model", messages=MSG, store=True,
                                          metadata={"run": run, "team": "gen"})  # fmt: skip
    other = client.chat.completions.create(model="fake-model", messages=MSG, store=True,
                                           metadata={"run": run, "team": "sdk"})  # fmt: skip
    assert [c["id"] for c in http.get(f"/v1/chat/completions?run={run}&team=gen").json()["data"]] == [made.id]
    both = http.get(f"/v1/chat/completions?run={run}&order=desc&limit=5").json()["data"]
    assert [c["id"] for c in both] == [other.id, made.id]
