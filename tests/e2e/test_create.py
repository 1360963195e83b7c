"""Create through the openai SDK: what the client gets, what the backend sees, what is stored,
and that a streamed completion is stored exactly as the same non-streamed one."""

import re
import socket
import time
from typing import Any

import openai
import orjson
import pytest

from tests.fakes import FakeBackend
from tests.server import Storegate
from tests.spec import spec

ID = re.compile(r"chatcmpl-[0-9A-Za-z]{29}")
USER = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "tell me about storage"}]
TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
# Per-request differences that are not part of the completion itself.
VOLATILE = ("id", "created", "request_id")


def _stored(client: openai.OpenAI, completion_id: str) -> dict[str, Any]:
    doc = client.chat.completions.retrieve(completion_id).model_dump(exclude_unset=True)
    return {k: v for k, v in doc.items() if k not in VOLATILE}


def test_non_streamed_store_true(client: openai.OpenAI, fake: FakeBackend) -> None:
    fake.clear()
    before = int(time.time())
    resp = client.chat.completions.create(
        model="fake-model", messages=USER, store=True, metadata={"team": "a"}, temperature=0.5, seed=7
    )
    assert ID.fullmatch(resp.id) and resp.id != "chatcmpl-fake1"
    assert before <= resp.created <= int(time.time()) + 1, "created is storegate's clock, not the backend's"
    assert resp.choices[0].message.content == "echo: tell me about storage"
    [seen] = fake.requests()
    assert seen["body"] == {"model": "fake-model", "messages": USER, "temperature": 0.5, "seed": 7}
    stored = client.chat.completions.retrieve(resp.id)
    assert stored.metadata == {"team": "a"}
    assert stored.model_dump()["temperature"] == 0.5 and stored.model_dump()["seed"] == 7
    sent = resp.model_dump(exclude_unset=True)
    got = stored.model_dump(exclude_unset=True)
    assert {k: got[k] for k in sent} == sent, "the stored object is the completion the client received"


def test_store_false_is_not_kept_and_body_passes_untouched(client: openai.OpenAI, fake: FakeBackend) -> None:
    fake.clear()
    resp = client.chat.completions.create(model="fake-model", messages=USER, extra_body={"top_k": 3})
    assert ID.fullmatch(resp.id)
    assert fake.requests()[0]["body"] == {"model": "fake-model", "messages": USER, "top_k": 3}
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.retrieve(resp.id)


@pytest.mark.parametrize("seed", [2**64 - 1, -(2**63)])
def test_integers_at_the_64_bit_edges_pass_exactly_when_the_body_is_rewritten(
    client: openai.OpenAI, fake: FakeBackend, seed: int
) -> None:
    fake.clear()  # store and metadata are taken out: the body the backend gets is written anew
    resp = client.chat.completions.create(model="fake-model", messages=USER, store=True, metadata={"a": "b"},
                                          seed=seed)  # fmt: skip
    assert fake.requests()[0]["body"]["seed"] == seed
    assert client.chat.completions.retrieve(resp.id).model_dump()["seed"] == seed


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param({}, id="plain"),
        pytest.param({"n": 3}, id="n3"),
        pytest.param({"tools": TOOLS}, id="tools"),
        pytest.param({"tools": TOOLS, "n": 2}, id="tools-n2"),
        pytest.param({"logprobs": True, "top_logprobs": 2}, id="logprobs"),
        pytest.param({"model": "fake-model+refuse"}, id="refusal"),
        pytest.param({"max_tokens": 2}, id="length"),
    ],
)
def test_stream_is_stored_like_the_same_non_streamed_call(
    client: openai.OpenAI, extra: dict[str, Any]
) -> None:
    args: dict[str, Any] = {"model": "fake-model", "messages": USER, "store": True, **extra}
    plain = client.chat.completions.create(**args)
    chunks = list(client.chat.completions.create(**args, stream=True))
    spec().validate_chunks([c.model_dump(exclude_unset=True) for c in chunks])
    assert {c.id for c in chunks} == {chunks[0].id} and ID.fullmatch(chunks[0].id)
    assert {c.created for c in chunks} == {chunks[0].created}
    assert all(c.usage is None for c in chunks), "the usage we asked for is kept from the client"
    assert _stored(client, chunks[0].id) == _stored(client, plain.id)


def test_stream_usage_asked_by_client_is_passed(client: openai.OpenAI, fake: FakeBackend) -> None:
    fake.clear()
    chunks = list(
        client.chat.completions.create(
            model="fake-model", messages=USER, store=True, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    stored = client.chat.completions.retrieve(chunks[0].id)
    assert stored.usage == chunks[-1].usage


def test_stream_asks_backend_for_usage_only_when_storing(client: openai.OpenAI, fake: FakeBackend) -> None:
    fake.clear()
    list(client.chat.completions.create(model="fake-model", messages=USER, store=True, stream=True))
    list(client.chat.completions.create(model="fake-model", messages=USER, stream=True))
    stored_req, plain_req = (r["body"] for r in fake.requests())
    assert stored_req["stream_options"] == {"include_usage": True}
    assert "stream_options" not in plain_req and "store" not in stored_req


def test_strict_backend_never_sees_store_or_metadata() -> None:
    with FakeBackend(strict=True) as strict:
        sg = Storegate(strict.url).start()
        try:
            with sg.client() as client:
                resp = client.chat.completions.create(
                    model="fake-model", messages=USER, store=True, metadata={"a": "b"}
                )
                assert client.chat.completions.retrieve(resp.id).metadata == {"a": "b"}
                chunks = list(
                    client.chat.completions.create(model="fake-model", messages=USER, store=True, stream=True)
                )
                assert client.chat.completions.retrieve(chunks[0].id).choices[0].message.content
        finally:
            sg.stop()


def test_pass_through_backend_sees_store_and_metadata(fake: FakeBackend, tmp_path: Any) -> None:
    config = tmp_path / "storegate.toml"
    config.write_text(f'[[backends]]\nname = "fake"\nurl = "{fake.url}"\npass_store = true\n')
    sg = Storegate(None, args=["--config", str(config)]).start()
    try:
        fake.clear()
        with sg.client() as client:
            client.chat.completions.create(model="fake-model", messages=USER, store=True, metadata={"a": "b"})
        assert fake.requests()[0]["body"]["metadata"] == {"a": "b"}
        assert fake.requests()[0]["body"]["store"] is True
    finally:
        sg.stop()


def test_store_default_stores_without_store_field(fake: FakeBackend) -> None:
    sg = Storegate(fake.url, args=["--store-default"]).start()
    try:
        with sg.client() as client:
            resp = client.chat.completions.create(model="fake-model", messages=USER, metadata={"a": "b"})
            assert client.chat.completions.retrieve(resp.id).metadata == {"a": "b"}
            off = client.chat.completions.create(model="fake-model", messages=USER, store=False)
            with pytest.raises(openai.NotFoundError):
                client.chat.completions.retrieve(off.id)
    finally:
        sg.stop()


def test_big_answer_is_passed_and_stored(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(model="fake-model+big", messages=USER, store=True)
    content = resp.choices[0].message.content or ""
    assert len(content) > 2_000_000
    assert client.chat.completions.retrieve(resp.id).choices[0].message.content == content
    chunks = list(
        client.chat.completions.create(model="fake-model+big", messages=USER, store=True, stream=True)
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == content
    assert client.chat.completions.retrieve(chunks[0].id).choices[0].message.content == content


def test_a_client_that_reads_slowly_gets_the_whole_stream(server: Storegate, client: openai.OpenAI) -> None:
    """A 12 MB stream to a client with a small receive window that stops reading for a while: more
    than the sockets' buffers hold, so storegate must stop reading the backend until the client
    catches up; every byte still arrives, in order, and the whole completion is stored."""
    body = orjson.dumps({"model": "fake-model+huge", "messages": USER, "store": True, "stream": True})
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Connection: close\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body))  # fmt: skip
        time.sleep(1.5)  # the backend has long sent everything; storegate holds what the client has not read
        raw = bytearray()
        sock.settimeout(30)
        while chunk := sock.recv(65536):
            raw += chunk
    head, _, payload = bytes(raw).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"Transfer-Encoding: chunked" in head
    datas = [e[6:] for e in _dechunk(payload).split(b"\n\n") if e.startswith(b"data: ")]
    assert datas[-1] == b"[DONE]"
    chunks = [orjson.loads(d) for d in datas[:-1]]
    content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert len(content) > 12_000_000
    assert client.chat.completions.retrieve(chunks[0]["id"]).choices[0].message.content == content


@pytest.mark.parametrize("n", [1, 2])
def test_a_stream_ended_without_done_once_every_choice_finished_is_whole(
    server: Storegate, client: openai.OpenAI, n: int
) -> None:
    """Some servers never send [DONE]: once every choice has its finish_reason, the clean end of the
    backend's message is the end of the answer. storegate stores it whole and sends [DONE] itself."""
    args: dict[str, Any] = {"model": "fake-model", "messages": USER, "store": True, "n": n}
    plain = client.chat.completions.create(**args)
    with server.http() as h:
        resp = h.post("/v1/chat/completions", json={**args, "model": "fake-model+no-done", "stream": True})
    assert resp.status_code == 200
    datas = [e[6:] for e in resp.content.split(b"\n\n") if e.startswith(b"data: ")]
    assert datas[-1] == b"[DONE]" and b"error" not in datas[-2]
    chunk_id = orjson.loads(datas[0])["id"]
    assert "incomplete_details" not in client.chat.completions.retrieve(chunk_id).model_dump(
        exclude_unset=True
    )
    assert _stored(client, chunk_id) == _stored(client, plain.id)


def test_an_http_1_0_client_gets_the_stream_unchunked(server: Storegate) -> None:
    """HTTP/1.0 has no chunked coding: the frames go out as they are and the close ends the body."""
    body = orjson.dumps({"model": "fake-model", "messages": USER, "store": True, "stream": True})
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.0\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%b" % (len(body), body))  # fmt: skip
        sock.settimeout(30)
        raw = bytearray()
        while chunk := sock.recv(65536):
            raw += chunk
    head, _, payload = bytes(raw).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.") and b" 200 " in head.split(b"\r\n")[0]
    assert b"transfer-encoding" not in head.lower()
    events = payload.split(b"\n\n")
    assert events[-1] == b"" and events[-2] == b"data: [DONE]"
    chunks = [orjson.loads(e[6:]) for e in events[:-2]]
    assert (
        all(e.startswith(b"data: {") for e in events[:-2]) and chunks[0]["object"] == "chat.completion.chunk"
    )


def _dechunk(payload: bytes) -> bytes:
    out, pos = bytearray(), 0
    while True:
        end = payload.index(b"\r\n", pos)
        size = int(payload[pos:end], 16)
        if size == 0:
            return bytes(out)
        out += payload[end + 2 : end + 2 + size]
        pos = end + 2 + size + 2


def test_models_lists_backend_models(client: openai.OpenAI) -> None:
    assert {m.id for m in client.models.list()} == {"fake-model", "other-model"}
