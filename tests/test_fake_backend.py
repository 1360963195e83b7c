"""Tests for the fake backend (tests/fakes): driven by the official openai SDK and raw http.client,
checked against OpenAI's spec with tests/spec.py."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import openai
import pytest
from openai.types.chat import ChatCompletionFunctionToolParam, ChatCompletionMessageParam

from tests.fakes import FakeBackend, free_port
from tests.spec import parse_sse, spec

USER: list[ChatCompletionMessageParam] = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "hello there world"},
]
TOOLS: list[ChatCompletionFunctionToolParam] = [
    {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}
]


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeBackend]:
    with FakeBackend(models=["fake-model", "other"]) as backend:
        yield backend


@pytest.fixture(scope="module")
def strict_fake() -> Iterator[FakeBackend]:
    with FakeBackend(strict=True, require_key="sk-good") as backend:
        yield backend


@pytest.fixture
def client(fake: FakeBackend) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=fake.url, api_key="x", max_retries=0) as c:
        yield c


@dataclass
class Raw:
    status: int
    headers: dict[str, str]  # lower-cased names
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode()

    def json(self) -> Any:
        return json.loads(self.body)


def connect(fake: FakeBackend, timeout: float) -> http.client.HTTPConnection:
    url = urlsplit(fake.url)
    return http.client.HTTPConnection(url.hostname or "", url.port, timeout=timeout)


def send(conn: http.client.HTTPConnection, body: dict[str, Any]) -> http.client.HTTPResponse:
    headers = {"Content-Type": "application/json", "Authorization": "Bearer x"}
    conn.request("POST", "/v1/chat/completions", body=json.dumps({"messages": USER, **body}), headers=headers)
    return conn.getresponse()


def post(fake: FakeBackend, timeout: float = 10, **body: Any) -> Raw:
    conn = connect(fake, timeout)
    try:
        resp = send(conn, body)
        data = resp.read()
        return Raw(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
    finally:
        conn.close()


def stream_lines(fake: FakeBackend, model: str, timeout: float = 10) -> tuple[list[bytes], Exception]:
    """Read a stream that must break off; returns the non-empty lines read and the exception."""
    conn = connect(fake, timeout)
    data = b""
    try:
        resp = send(conn, {"model": model, "stream": True})
        while piece := resp.read1(65536):  # readline() would swallow a broken chunked encoding
            data += piece
    except (http.client.HTTPException, OSError) as exc:
        return [line for line in data.splitlines() if line.strip()], exc
    finally:
        conn.close()
    raise AssertionError(f"stream of {model} ended cleanly: {data!r}")


def test_non_streamed(client: openai.OpenAI, fake: FakeBackend) -> None:
    result = client.chat.completions.create(model="fake-model", messages=USER)
    assert result.model == "fake-model-2024"
    assert result.created == 1700000000
    assert result.system_fingerprint == "fp_fake"
    assert result.id.startswith("chatcmpl-fake")
    assert result.service_tier is None
    choice = result.choices[0]
    assert (choice.message.content, choice.finish_reason) == ("echo: hello there world", "stop")
    assert result.usage is not None
    assert (result.usage.prompt_tokens, result.usage.completion_tokens, result.usage.total_tokens) == (
        5,
        4,
        9,
    )
    raw = post(fake, model="fake-model", n=3, service_tier="auto")
    assert raw.status == 200
    body = raw.json()
    spec().validate_response("createChatCompletion", 200, body)
    assert [c["message"]["content"] for c in body["choices"]] == [
        f"echo: hello there world [{i}]" for i in range(3)
    ]
    assert body["service_tier"] == "default"
    assert body["usage"]["completion_tokens"] == 15


def test_max_tokens_and_content_parts(fake: FakeBackend) -> None:
    parts = [
        {"type": "text", "text": "one two"},
        {"type": "image_url", "image_url": {"url": "x"}},
        {"type": "text", "text": "three"},
    ]
    body = post(
        fake, model="m", messages=[{"role": "user", "content": parts}], max_completion_tokens=3
    ).json()
    spec().validate_response("createChatCompletion", 200, body)
    assert body["choices"][0]["message"]["content"] == "echo: one two\n"
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}


def test_streamed_n2_with_usage(client: openai.OpenAI, fake: FakeBackend) -> None:
    texts = ["", ""]
    order: list[int] = []
    finish: dict[int, str] = {}
    usage = None
    with client.chat.completions.create(
        model="fake-model",
        messages=USER,
        n=2,
        stream=True,
        stream_options={"include_usage": True},
    ) as stream:
        for chunk in stream:
            assert chunk.model == "fake-model-2024"
            if not chunk.choices:
                usage = chunk.usage
                continue
            assert chunk.usage is None
            for c in chunk.choices:
                if c.delta.content:
                    texts[c.index] += c.delta.content
                    order.append(c.index)
                if c.finish_reason:
                    finish[c.index] = c.finish_reason
    assert texts == ["echo: hello there world [0]", "echo: hello there world [1]"]
    assert order == [0, 1] * 5  # interleaved
    assert finish == {0: "stop", 1: "stop"}
    assert usage is not None and usage.completion_tokens == 10 and usage.prompt_tokens == 5
    raw = post(fake, model="fake-model", n=2, stream=True, stream_options={"include_usage": True})
    assert raw.headers["content-type"].startswith("text/event-stream")
    chunks, done = parse_sse(raw.text)
    assert done
    spec().validate_chunks(chunks)
    assert all("usage" in c for c in chunks) and chunks[-1]["choices"] == []
    assert all(
        set(ch) == {"index", "delta", "logprobs", "finish_reason"} for c in chunks for ch in c["choices"]
    )
    plain, _ = parse_sse(post(fake, model="fake-model", stream=True).text)
    assert not any("usage" in c for c in plain)


def test_tool_calls_streamed(client: openai.OpenAI, fake: FakeBackend) -> None:
    args = ""
    name = None
    finish = None
    with client.chat.completions.create(model="m", messages=USER, tools=TOOLS, stream=True) as stream:
        for chunk in stream:
            for c in chunk.choices:
                for call in c.delta.tool_calls or []:
                    assert call.index == 0
                    if call.function and call.function.name:
                        name = call.function.name
                    if call.function and call.function.arguments:
                        args += call.function.arguments
                finish = c.finish_reason or finish
    assert name == "lookup" and finish == "tool_calls"
    assert json.loads(args) == {"q": "echo: hello there world"}
    chunks, done = parse_sse(post(fake, model="m", tools=TOOLS, stream=True).text)
    assert done and len(chunks) > 4
    spec().validate_chunks(chunks)
    body = post(fake, model="m", tools=TOOLS).json()
    spec().validate_response("createChatCompletion", 200, body)
    call = body["choices"][0]["message"]["tool_calls"][0]
    assert call["id"] == "call_0_0" and json.loads(call["function"]["arguments"]) == {
        "q": "echo: hello there world"
    }
    none = post(fake, model="m", tools=TOOLS, tool_choice="none").json()
    assert none["choices"][0]["message"]["content"] == "echo: hello there world"


def test_logprobs(client: openai.OpenAI, fake: FakeBackend) -> None:
    result = client.chat.completions.create(model="m", messages=USER, logprobs=True, top_logprobs=2)
    lp = result.choices[0].logprobs
    assert lp is not None and lp.content is not None
    assert [t.token for t in lp.content] == ["echo: ", "hello ", "there ", "world"]
    assert all(len(t.top_logprobs) == 2 and t.bytes == list(t.token.encode()) for t in lp.content)
    spec().validate_response(
        "createChatCompletion", 200, post(fake, model="m", logprobs=True, top_logprobs=3).json()
    )
    chunks, _ = parse_sse(post(fake, model="m", logprobs=True, stream=True).text)
    spec().validate_chunks(chunks)
    tokens = [
        c["choices"][0]["logprobs"]["content"][0]["token"] for c in chunks if c["choices"][0]["logprobs"]
    ]
    assert "".join(tokens) == "echo: hello there world"


def test_refusal(fake: FakeBackend) -> None:
    body = post(fake, model="m+refuse").json()
    spec().validate_response("createChatCompletion", 200, body)
    assert body["choices"][0]["message"] == {
        "role": "assistant",
        "content": None,
        "refusal": "I can't help with that.",
    }
    chunks, _ = parse_sse(post(fake, model="m+refuse+slow", stream=True).text)
    spec().validate_chunks(chunks)
    assert "".join(c["choices"][0]["delta"].get("refusal", "") for c in chunks) == "I can't help with that."


def test_fault_500_via_sdk(client: openai.OpenAI, fake: FakeBackend) -> None:
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="fake-model+fault-500", messages=USER)
    assert info.value.status_code == 500
    raw = post(fake, model="m+fault-500")
    spec().validate_response("createChatCompletion", 500, raw.json())


@pytest.mark.parametrize(
    ("directive", "status", "code"),
    [("fault-400", 400, "fake_bad"), ("fault-429", 429, "rate_limit_exceeded"), ("fault-500", 500, None)],
)
def test_error_faults(fake: FakeBackend, directive: str, status: int, code: str | None) -> None:
    for stream in (False, True):
        raw = post(fake, model=f"m+{directive}", stream=stream)
        assert raw.status == status
        spec().validate_response("createChatCompletion", status, raw.json())
        assert raw.json()["error"]["code"] == code
    if status == 429:
        assert raw.headers["retry-after"] == "7"


def test_odd_faults(fake: FakeBackend) -> None:
    plain = post(fake, model="m+fault-plain-404")
    assert (plain.status, plain.json()) == (404, {"detail": "Not Found"})
    garbage = post(fake, model="m+fault-garbage")
    assert garbage.status == 200 and garbage.headers["content-type"].startswith("application/json")
    assert garbage.text == "this is not json"
    with pytest.raises(ConnectionError):  # http.client.RemoteDisconnected
        post(fake, model="m+fault-cut")
    error_event = post(fake, model="m+fault-error-event", stream=True)
    chunks, done = parse_sse(error_event.text)
    assert not done and chunks[-1] == {
        "error": {"message": "backend exploded", "type": "server_error", "param": None, "code": None}
    }
    assert len(chunks) == 4
    malformed = post(fake, model="m+fault-malformed-sse", stream=True).text
    assert "data: {not json\n\n" in malformed and malformed.endswith("data: [DONE]\n\n")


def test_stream_cut_and_stall(fake: FakeBackend) -> None:
    lines, exc = stream_lines(fake, "m+fault-cut")
    assert isinstance(exc, http.client.IncompleteRead | ConnectionError), exc
    assert len(lines) == 4  # role chunk + 3 content chunks
    lines, exc = stream_lines(fake, "m+fault-stall", timeout=0.3)
    assert isinstance(exc, TimeoutError) and len(lines) == 3
    with pytest.raises(TimeoutError):
        post(fake, timeout=0.3, model="m+fault-timeout")


def test_big(fake: FakeBackend) -> None:
    body = post(fake, model="m+big").json()
    assert body["choices"][0]["message"]["content"] == "echo: hello there world" + "x" * 2_000_000
    chunks, done = parse_sse(post(fake, model="m+big", stream=True).text)
    assert done
    pieces = [c["choices"][0]["delta"].get("content") or "" for c in chunks]
    assert max(map(len, pieces)) == 64 * 1024 and "".join(pieces).endswith("x" * 2_000_000)


def test_strict_and_key(strict_fake: FakeBackend) -> None:
    with openai.OpenAI(base_url=strict_fake.url, api_key="sk-good", max_retries=0) as c:
        ok = c.chat.completions.create(model="m", messages=USER, temperature=0.5, seed=1)
        assert ok.choices[0].message.content == "echo: hello there world"
        with pytest.raises(openai.BadRequestError) as info:
            c.chat.completions.create(model="m", messages=USER, extra_body={"store": True})
        assert info.value.code == "unknown_field" and info.value.param == "store"
        assert info.value.body == {
            "message": "Unrecognized request argument supplied: store",
            "type": "invalid_request_error",
            "param": "store",
            "code": "unknown_field",
        }
    with (
        openai.OpenAI(base_url=strict_fake.url, api_key="sk-bad", max_retries=0) as c,
        pytest.raises(openai.AuthenticationError),
    ):
        c.chat.completions.create(model="m", messages=USER)


def test_requests_recording_and_models(client: openai.OpenAI, fake: FakeBackend) -> None:
    fake.clear()
    assert fake.requests() == []
    client.chat.completions.create(model="fake-model", messages=USER, metadata={"k": "v"}, store=True)
    recorded = fake.requests()
    assert len(recorded) == 1
    assert recorded[0]["authorization"] == "Bearer x"
    assert recorded[0]["body"]["store"] is True and recorded[0]["body"]["metadata"] == {"k": "v"}
    fake.clear()
    assert fake.requests() == []
    assert [m.id for m in client.models.list()] == ["fake-model", "other"]


def test_controller_lifecycle() -> None:
    port = free_port()
    backend = FakeBackend(port=port)
    with pytest.raises(RuntimeError):
        _ = backend.url
    with backend:
        assert backend.url == f"http://127.0.0.1:{port}/v1"
        assert backend.requests() == []
        with pytest.raises(RuntimeError, match="did not start"):  # the port is taken
            FakeBackend(port=port).start()
    backend.stop()  # idempotent
