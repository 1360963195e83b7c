"""Hostile input: odd bytes in ids, queries and headers, unusual metadata round-tripping through the
API, and a client that never finishes its body. Each gets a clean 4xx (or works), never a 5xx."""

import socket
import time
from collections.abc import Iterator
from urllib.parse import quote

import httpx2 as httpx
import openai
import pytest

from tests.fakes import FakeBackend
from tests.server import Storegate

ODD = {"nul\x00key": "v\x00al", "quote'\"`": "'; DROP TABLE completions; --", "ünï 😀": "\u202e\t\n\r",
       "[brackets]": "a&b=c#d", "%41": "%zz"}  # fmt: skip


@pytest.mark.parametrize(
    "path",
    ["/v1/chat/completions/%00", "/v1/chat/completions/%FF%FE", "/v1/chat/completions/" + "a" * 5000,
     "/v1/chat/completions/chatcmpl-%F0%9F%98%80", "/v1/chat/completions/..%2F..%2Fetc%2Fpasswd",
     "/v1/chat/completions/%00/messages"],
)  # fmt: skip
def test_odd_ids_are_404(http: httpx.Client, path: str) -> None:
    for method in ("GET",) if path.endswith("/messages") else ("GET", "DELETE"):
        resp = http.request(method, path)
        assert resp.status_code == 404 and resp.json()["error"]["message"].startswith("No chat completion")


@pytest.mark.parametrize("query", ["metadata%5Bk%5D=%FF", "limit=%00", "order=%FF", "after=%00",
                                   "metadata%5B%00%5D=x", "model=%FF%FE", "created_after=1e99"])  # fmt: skip
def test_odd_queries_are_answered_cleanly(http: httpx.Client, query: str) -> None:
    resp = http.get("/v1/chat/completions?" + query)
    assert resp.status_code in (200, 400), resp.text


def test_odd_metadata_round_trips_and_filters(client: openai.OpenAI, http: httpx.Client) -> None:
    made = client.chat.completions.create(model="fake-model", store=True, metadata=ODD,
                                          messages=[{"role": "user", "content": "\x00odd\ud7ff"}])  # fmt: skip
    assert client.chat.completions.retrieve(made.id).metadata == ODD
    for key, value in ODD.items():
        query = f"metadata[{quote(key, safe='')}]={quote(value, safe='')}&limit=100"
        ids = [c["id"] for c in http.get("/v1/chat/completions?" + query).json()["data"]]
        assert made.id in ids, key
        assert made.id not in [c.id for c in client.chat.completions.list(metadata={key: value + "!"}).data]
    assert client.chat.completions.messages.list(made.id).data[0].content == "\x00odd\ud7ff"


def test_odd_authorization_headers(server: Storegate) -> None:
    for value in (b"Bearer \xff\xfe", b"Basic abc", b"Bearer", b"bearer  spaced  ", b"\x7f"):
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(b"GET /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: " + value +
                         b"\r\nConnection: close\r\n\r\n")  # fmt: skip
            status = sock.recv(65536).split(b" ", 2)[1]
        assert status in (b"200", b"400", b"401"), (value, status)


@pytest.mark.parametrize(
    "header",
    [b"Authorization: Bearer sk-SECRET-LONG" + b"A" * 9000,  # a line over aiohttp's 8190-byte limit
     b"Authorization: Bearer sk-SECRET-CTRL\x01x"],  # a control character the parser refuses
)  # fmt: skip
def test_a_request_the_parser_refuses_logs_no_byte_of_it(server: Storegate, header: bytes) -> None:
    """aiohttp answers these itself (its plain 400), and its log record quoted the bad line: a key."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET /v1/chat/completions HTTP/1.1\r\nHost: x\r\n" + header + b"\r\n\r\n")
        answer = sock.recv(65536)
    assert answer.split(b" ", 2)[1] == b"400", answer
    deadline = time.monotonic() + 5
    while "refused a request aiohttp's parser could not read" not in server.logs():
        assert time.monotonic() < deadline, "the refusal is logged"
        time.sleep(0.05)
    assert "SECRET" not in server.logs()


@pytest.fixture(scope="module")
def impatient(fake: FakeBackend) -> Iterator[Storegate]:
    sg = Storegate(fake.url, args=["--body-timeout", "1"]).start()
    yield sg
    sg.stop()


def test_a_body_that_never_finishes_times_out(impatient: Storegate) -> None:
    with socket.create_connection(("127.0.0.1", impatient.port), timeout=10) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n{\"model\": ")  # fmt: skip
        started = time.monotonic()
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:100]
    assert b"request_timeout" in answer and time.monotonic() - started < 5
    with impatient.http() as http:  # and the server still serves
        assert http.get("/v1/chat/completions").status_code == 200
