"""Backend faults as the client sees them: the status codes of CONTRACT.md "Errors", a backend's own
4xx passed through, streams cut mid-way ending in an error event (no [DONE]) and stored as far as they
got, routing by model, backend keys that never leak to the client, the backend or the log; and health
and x-request-id on every response."""

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import openai
import pytest

from tests.fakes import FakeBackend, free_port
from tests.server import Storegate
from tests.spec import parse_sse, spec

ID = re.compile(r"chatcmpl-[0-9A-Za-z]{29}")
MISSING_ID = "chatcmpl-" + "A" * 29
USER = [{"role": "user", "content": "one two three four five six"}]
BACKEND_KEY, WRONG_KEY, CLIENT_KEY = "sk-backend-secret", "sk-wrong-key-0123456789", "sk-test"
E400 = {"message": "fake backend rejects this", "type": "invalid_request_error", "param": "messages",
        "code": "fake_bad"}  # fmt: skip
E429 = {"message": "Rate limit reached for fake-model.", "type": "requests", "param": None,
        "code": "rate_limit_exceeded"}  # fmt: skip
E401 = {"message": "Incorrect API key provided.", "type": "invalid_request_error", "param": None,
        "code": "invalid_api_key"}  # fmt: skip
# what reached the client before each mid-stream fault (the fake's script: role chunk, then tokens)
PRODUCED = {
    "fault-cut": "echo: one two ",
    "fault-malformed-sse": "echo: one ",
    "fault-error-event": "echo: one ",
    "fault-stall": "echo: one ",
    "fault-early-end": "echo: one ",  # the message ends cleanly, no [DONE], no choice finished
}


def assert_envelope(resp: httpx.Response, status: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers.get("x-request-id", "").startswith("req_")
    body = resp.json()
    assert list(body) == ["error"] and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"], body
    return dict(body["error"])


def post(http: httpx.Client, model: str, *, stream: bool, **extra: Any) -> httpx.Response:
    body = {"model": model, "messages": USER, "store": True, "stream": stream, **extra}
    return http.post("/v1/chat/completions", json=body)


def start(backend_url: str, *args: str) -> Storegate:
    return Storegate(backend_url, args=list(args)).start()


@pytest.fixture(scope="module")
def slow_fake() -> Iterator[FakeBackend]:
    with FakeBackend() as backend:
        yield backend


@pytest.fixture(scope="module")
def timeout_server(slow_fake: FakeBackend, db_url: str | None) -> Iterator[Storegate]:
    """On each store kind: a stalled stream's partial completion is stored by the store."""
    sg = Storegate(slow_fake.url, db_url=db_url, args=["--backend-read-timeout", "1"]).start()
    yield sg
    sg.stop()


# --- faults before the first byte ---------------------------------------------------------------------

STREAM = pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])


@pytest.mark.parametrize(
    ("directive", "stream"),
    [
        pytest.param("fault-500", False, id="fault-500-plain"),
        pytest.param("fault-500", True, id="fault-500-stream"),
        pytest.param("fault-garbage", False, id="fault-garbage-plain"),
        pytest.param("fault-garbage", True, id="fault-garbage-stream"),
        pytest.param("fault-cut", False, id="fault-cut-plain"),  # streamed, it is a mid-stream fault
    ],
)
def test_backend_failure_is_502(http: httpx.Client, directive: str, stream: bool) -> None:
    assert_envelope(post(http, f"fake-model+{directive}", stream=stream), 502)


@STREAM
def test_backend_400_is_passed_through(http: httpx.Client, stream: bool) -> None:
    resp = post(http, "fake-model+fault-400", stream=stream)
    assert_envelope(resp, 400)
    assert resp.json() == {"error": E400}


@STREAM
def test_backend_429_is_passed_through_with_retry_after(http: httpx.Client, stream: bool) -> None:
    resp = post(http, "fake-model+fault-429", stream=stream)
    assert_envelope(resp, 429)
    assert resp.json() == {"error": E429}
    assert resp.headers.get("Retry-After") == "7"


@STREAM
def test_backend_plain_404_is_wrapped_in_our_envelope(http: httpx.Client, stream: bool) -> None:
    resp = post(http, "fake-model+fault-plain-404", stream=stream)
    assert_envelope(resp, 404)
    assert "detail" not in resp.json()


def test_backend_errors_through_sdk(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="fake-model+fault-400", messages=USER)
    assert (bad.value.param, bad.value.code) == ("messages", "fake_bad")
    with pytest.raises(openai.RateLimitError) as limited:
        client.chat.completions.create(model="fake-model+fault-429", messages=USER)
    assert limited.value.response.headers.get("Retry-After") == "7"
    with pytest.raises(openai.InternalServerError) as failed:
        client.chat.completions.create(model="fake-model+fault-500", messages=USER)
    assert failed.value.status_code == 502


@STREAM
def test_backend_timeout_is_504(timeout_server: Storegate, stream: bool) -> None:
    with timeout_server.http() as h:
        started = time.monotonic()
        assert_envelope(post(h, "fake-model+fault-timeout", stream=stream), 504)
        assert time.monotonic() - started < 10


@pytest.fixture(scope="module")
def dead_server() -> Iterator[Storegate]:
    sg = start(f"http://127.0.0.1:{free_port()}/v1")
    yield sg
    sg.stop()


@STREAM
def test_backend_not_listening_is_502(dead_server: Storegate, stream: bool) -> None:
    with dead_server.http() as h:
        assert_envelope(post(h, "fake-model", stream=stream), 502)
        assert h.get("/healthz").status_code == 200, "healthz answers whether or not a backend is up"
        assert h.get("/readyz").status_code == 200


@pytest.fixture(scope="module")
def routed_server(fake: FakeBackend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Storegate]:
    config = Path(tmp_path_factory.mktemp("routed")) / "storegate.toml"
    config.write_text(f'[[backends]]\nname = "fake"\nurl = "{fake.url}"\nmodels = ["routed-model"]\n')
    sg = Storegate(None, args=["--config", str(config)]).start()
    yield sg
    sg.stop()


@STREAM
def test_unrouted_model_is_404(routed_server: Storegate, fake: FakeBackend, stream: bool) -> None:
    with routed_server.http() as h:
        calls = len(fake.requests())
        resp = post(h, "no-such-model", stream=stream)
        error = assert_envelope(resp, 404)
        assert (error["param"], error["code"]) == ("model", "model_not_found")
        assert error["type"] == "invalid_request_error"
        assert len(fake.requests()) == calls, "an unrouted model never reaches a backend"
        ok = post(h, "routed-model", stream=stream)
        assert ok.status_code == 200, ok.text
        assert len(fake.requests()) == calls + 1


# --- health and request ids, whatever the backend does -----------------------------------------------


@pytest.fixture(scope="module")
def stored_id(server: Storegate) -> str:
    with server.http() as h:
        resp = post(h, "fake-model", stream=False)
        assert resp.status_code == 200, resp.text
        return str(resp.json()["id"])


def test_healthz_and_readyz(server: Storegate) -> None:
    with httpx.Client(base_url=server.url, timeout=10) as bare:  # no key, no Authorization header
        for path in ("/healthz", "/readyz"):
            resp = bare.get(path)
            assert resp.status_code == 200, resp.text
            assert resp.headers.get("x-request-id", "").startswith("req_")


def test_every_response_has_a_request_id(server: Storegate, stored_id: str) -> None:
    requests: list[tuple[str, str, Any]] = [
        ("GET", "/healthz", None),
        ("GET", "/readyz", None),
        ("GET", "/v1/models", None),
        ("GET", "/v1/chat/completions", None),
        ("GET", f"/v1/chat/completions/{stored_id}", None),
        ("GET", f"/v1/chat/completions/{stored_id}/messages", None),
        ("GET", f"/v1/chat/completions/{MISSING_ID}", None),
        ("GET", "/v1/chat/completions?limit=0", None),
        ("POST", "/v1/chat/completions", {"model": "fake-model"}),
        ("POST", "/v1/chat/completions", {"model": "fake-model", "messages": USER}),
        ("POST", "/v1/chat/completions", {"model": "fake-model+fault-500", "messages": USER}),
        ("PUT", "/v1/chat/completions", None),
        ("GET", "/no/such/route", None),
        ("GET", "/", None),
    ]
    seen: set[str] = set()
    with httpx.Client(base_url=server.url, timeout=10) as bare:  # no validation hook: check the header only
        for method, path, body in requests:
            resp = bare.request(method, path, json=body)
            rid = resp.headers.get("x-request-id", "")
            assert rid.startswith("req_") and len(rid) > 4, f"{method} {path} -> {resp.status_code}: {rid!r}"
            seen.add(rid)
        stream_body = {"model": "fake-model", "messages": USER, "stream": True}
        with bare.stream("POST", "/v1/chat/completions", json=stream_body) as resp:
            resp.read()
            assert resp.headers.get("x-request-id", "").startswith("req_")
            seen.add(resp.headers["x-request-id"])
    assert len(seen) == len(requests) + 1, "request ids are unique"


# --- faults mid-stream --------------------------------------------------------------------------------

MID_STREAM = pytest.mark.parametrize("directive", list(PRODUCED))


def _server_for(directive: str, server: Storegate, timeout_server: Storegate) -> Storegate:
    return timeout_server if directive == "fault-stall" else server


def _stored_when_ready(http: httpx.Client, completion_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 5
    while True:
        resp = http.get(f"/v1/chat/completions/{completion_id}")
        if resp.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert resp.status_code == 200, f"the partial completion was not stored within 5 s: {resp.text}"
    doc: dict[str, Any] = resp.json()
    return doc


def _access_line(sg: Storegate, request_id: str) -> dict[str, Any]:
    """The request's access log line (written once the pass that answered it has run)."""
    deadline = time.monotonic() + 5
    while True:
        for line in sg.logs().splitlines():
            if line.startswith('{"request_id"') and request_id in line:
                found: dict[str, Any] = json.loads(line)
                return found
        assert time.monotonic() < deadline, f"no access log line for {request_id}"
        time.sleep(0.05)


def _check_partial(sg: Storegate, completion_id: str, produced: str) -> None:
    with sg.http() as h:
        stored = _stored_when_ready(h, completion_id)
    assert stored["id"] == completion_id
    [choice] = stored["choices"]
    assert choice["message"]["content"] == produced
    assert choice["finish_reason"] == "length"
    details = stored.get("incomplete_details")
    assert isinstance(details, dict) and isinstance(details.get("reason"), str) and details["reason"], stored
    with sg.client() as c:  # the SDK parses it (and the hook validates it against the spec)
        assert c.chat.completions.retrieve(completion_id).choices[0].message.content == produced


@MID_STREAM
def test_mid_stream_fault_raw_sse(server: Storegate, timeout_server: Storegate, directive: str) -> None:
    sg = _server_for(directive, server, timeout_server)
    body = {"model": f"fake-model+{directive}", "messages": USER, "stream": True, "store": True}
    with sg.http() as h, h.stream("POST", "/v1/chat/completions", json=body) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        raw = resp.read()
    payloads, done = parse_sse(raw)
    assert not done, "no [DONE] after a backend failure"
    assert payloads, raw
    *chunks, last = payloads
    assert list(last) == ["error"], f"the stream ends with an error event: {last}"
    # Its access log line (status 200: the headers went out first) says why, in storegate's words.
    logged = _access_line(sg, resp.headers["x-request-id"])
    assert logged["status"] == 200 and logged["error"], logged
    if directive == "fault-error-event":
        assert logged["error"] == "the backend sent an error event mid-stream", "never the backend's words"
    else:
        assert logged["error"] == last["error"]["message"]
    assert set(last["error"]) == {"message", "type", "param", "code"}, last
    assert isinstance(last["error"]["message"], str) and last["error"]["message"]
    spec().validate_chunks(chunks)
    ids = {c["id"] for c in chunks}
    assert len(ids) == 1 and ID.fullmatch(next(iter(ids))), ids
    content = "".join(ch["delta"].get("content") or "" for c in chunks for ch in c["choices"])
    assert content == PRODUCED[directive]
    _check_partial(sg, ids.pop(), content)


@MID_STREAM
def test_mid_stream_fault_through_sdk(server: Storegate, timeout_server: Storegate, directive: str) -> None:
    sg = _server_for(directive, server, timeout_server)
    received: list[Any] = []
    with sg.client() as c:
        stream = c.chat.completions.create(
            model=f"fake-model+{directive}",
            messages=USER,
            stream=True,
            store=True,
        )
        with pytest.raises(openai.APIError):
            received.extend(stream)
    assert received, "the chunks produced before the fault reach the client"
    content = "".join(ch.delta.content or "" for c in received for ch in c.choices)
    assert content == PRODUCED[directive]
    _check_partial(sg, received[0].id, content)


# --- backend keys -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keyed_fake() -> Iterator[FakeBackend]:
    with FakeBackend(require_key=BACKEND_KEY) as backend:
        yield backend


@pytest.fixture(scope="module")
def keyed_server(keyed_fake: FakeBackend) -> Iterator[Storegate]:
    sg = start(keyed_fake.url, "--backend-key", BACKEND_KEY, "--log-level", "DEBUG")
    yield sg
    sg.stop()


@pytest.fixture(scope="module")
def wrong_key_server(keyed_fake: FakeBackend) -> Iterator[Storegate]:
    sg = start(keyed_fake.url, "--backend-key", WRONG_KEY, "--log-level", "DEBUG")
    yield sg
    sg.stop()


def test_backend_key_is_sent_and_client_key_is_not(keyed_server: Storegate, keyed_fake: FakeBackend) -> None:
    keyed_fake.clear()
    with keyed_server.client() as c:
        done = c.chat.completions.create(model="fake-model", messages=USER, store=True)
        assert c.chat.completions.retrieve(done.id).id == done.id
        streamed = list(c.chat.completions.create(model="fake-model", messages=USER, stream=True))
        assert streamed
        assert [m.id for m in c.models.list()] == ["fake-model"]
    seen = keyed_fake.requests()
    assert len(seen) == 2
    assert {r["authorization"] for r in seen} == {f"Bearer {BACKEND_KEY}"}
    assert all(CLIENT_KEY not in str(r) for r in seen), "the client's key is never forwarded"


@STREAM
def test_wrong_backend_key_passes_the_401_through(wrong_key_server: Storegate, stream: bool) -> None:
    with wrong_key_server.http() as h:
        resp = post(h, "fake-model", stream=stream)
        assert_envelope(resp, 401)
        assert resp.json() == {"error": E401}
        models = h.get("/v1/models")
        assert models.status_code == 401, models.text
        for text in (resp.text, models.text, str(resp.headers), str(models.headers)):
            assert WRONG_KEY not in text and BACKEND_KEY not in text and CLIENT_KEY not in text


def test_no_key_in_any_log(keyed_server: Storegate, wrong_key_server: Storegate) -> None:
    for sg in (keyed_server, wrong_key_server):
        with sg.http() as h:
            post(h, "fake-model", stream=False)
            post(h, "fake-model+fault-500", stream=False)
            with h.stream("POST", "/v1/chat/completions", json={"model": "fake-model", "messages": USER,
                                                                 "stream": True}) as resp:  # fmt: skip
                resp.read()
            with h.stream("POST", "/v1/chat/completions", json={
                "model": "fake-model+fault-error-event", "messages": USER, "stream": True, "store": True,
            }) as resp:  # fmt: skip
                resp.read()
            h.get("/v1/models")
        logs = sg.logs()
        assert logs, "the server logs something at DEBUG"
        for key in (BACKEND_KEY, WRONG_KEY, CLIENT_KEY):
            assert key not in logs, f"{key} appears in the log"
    # The failures' reasons were logged (a 5xx and a stream's error event), and no key with them.
    assert keyed_server.logs().count('"error":') >= 2


def test_pass_client_key_sends_the_clients_own_key_only_while_storegate_has_none(
    keyed_fake: FakeBackend, tmp_path: Path
) -> None:
    """`pass_client_key = true`: each client brings its own backend key (OpenAI-style), storegate
    forwards it and adds none. Once storegate keys exist, the Authorization header carries a
    storegate key, and that is never forwarded."""
    config = tmp_path / "storegate.toml"
    config.write_text(f'[[backends]]\nname = "own"\nurl = "{keyed_fake.url}"\npass_client_key = true\n'
                      f'key = "{WRONG_KEY}"\n')  # fmt: skip
    sg = Storegate(None, args=["--config", str(config)]).start()
    try:
        keyed_fake.clear()
        with sg.client(api_key=BACKEND_KEY) as own:
            done = own.chat.completions.create(model="fake-model", messages=USER, store=True)
            assert own.chat.completions.retrieve(done.id).id == done.id
            assert list(own.chat.completions.create(model="fake-model", messages=USER, stream=True))
            assert [m.id for m in own.models.list()] == ["fake-model"]
        with sg.client(api_key=CLIENT_KEY) as wrong, pytest.raises(openai.AuthenticationError):
            wrong.chat.completions.create(model="fake-model", messages=USER)
        assert [r["authorization"] for r in keyed_fake.requests()] == [f"Bearer {BACKEND_KEY}"] * 2 + [
            f"Bearer {CLIENT_KEY}"
        ]

        out = sg.cli("keys", "create", "--project", "p")
        assert out.returncode == 0, out.stderr
        secret = out.stdout.strip().splitlines()[-1]
        keyed_fake.clear()
        with sg.client(api_key=secret) as keyed, pytest.raises(openai.AuthenticationError):
            keyed.chat.completions.create(model="fake-model", messages=USER)  # the backend got WRONG_KEY
        seen = keyed_fake.requests()
        assert [r["authorization"] for r in seen] == [f"Bearer {WRONG_KEY}"]
        assert secret not in sg.logs() and all(secret not in str(r) for r in seen)
    finally:
        sg.stop()
