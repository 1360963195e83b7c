"""Nothing acknowledged is lost: a client leaving mid-stream, and SIGKILL under load."""

import sqlite3
import threading
import time
from contextlib import closing
from typing import Any

import httpx2 as httpx
import openai
import orjson

from tests.fakes import FakeBackend
from tests.server import Storegate
from tests.spec import parse_sse, spec

LONG = " ".join(f"word{i}" for i in range(300))


def _poll(client: openai.OpenAI, completion_id: str, seconds: float = 5.0) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        try:
            return client.chat.completions.retrieve(completion_id)
        except openai.NotFoundError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_client_leaving_mid_stream_stores_what_was_produced(server: Storegate, client: openai.OpenAI) -> None:
    body = {"model": "fake-model+slow", "messages": [{"role": "user", "content": LONG}], "store": True,
            "stream": True}  # fmt: skip
    received: list[dict[str, Any]] = []
    with (
        httpx.Client(base_url=server.url, timeout=30) as http,
        http.stream("POST", "/v1/chat/completions", json=body) as resp,
    ):
        assert resp.status_code == 200
        for line in resp.iter_lines():
            if line.startswith("data: "):
                received.append(orjson.loads(line[6:]))
            if len(received) == 6:
                break
    spec().validate_chunks(received)
    started = time.monotonic()
    stored = _poll(client, received[0]["id"]).model_dump()
    assert time.monotonic() - started < 5
    assert stored["incomplete_details"] == {"reason": "client_disconnected"}
    content = stored["choices"][0]["message"]["content"]
    full = "echo: " + LONG
    assert full.startswith(content) and len(content) < len(full), "stored as far as it got, and stopped"
    assert stored["choices"][0]["finish_reason"] == "length"


def _load(url: str, stop: threading.Event, acked: dict[str, Any], worker: int) -> None:
    with httpx.Client(base_url=url, timeout=10) as http:
        i = 0
        while not stop.is_set() and i < 2000:
            i += 1
            stream = i % 2 == 0
            body = {"model": "fake-model", "store": True, "stream": stream,
                    "messages": [{"role": "user", "content": f"worker {worker} request {i}"}]}  # fmt: skip
            try:
                resp = http.post("/v1/chat/completions", json=body)
            except httpx.HTTPError:
                continue
            if resp.status_code != 200:
                continue
            if stream:
                chunks, done = parse_sse(resp.text)
                if done:  # acknowledged: the client saw [DONE]
                    text = "".join(
                        c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]
                    )
                    acked[chunks[0]["id"]] = text
            else:
                doc = resp.json()
                acked[doc["id"]] = doc  # the whole body, to compare byte for byte


def test_sigkill_under_load_loses_nothing_acknowledged(fake: FakeBackend, fresh_db_url: str | None) -> None:
    sg = Storegate(fake.url, db_url=fresh_db_url).start()
    acked: dict[str, Any] = {}
    try:
        for _round in range(3):
            stop = threading.Event()
            workers = [threading.Thread(target=_load, args=(sg.url, stop, acked, w)) for w in range(6)]
            for w in workers:
                w.start()
            time.sleep(1.5)
            sg.kill()
            stop.set()
            for w in workers:
                w.join(30)
            sg.start()
        assert len(acked) > 50, f"the load produced too little to judge: {len(acked)}"
        lost = []
        with sg.client() as client:
            for completion_id, text in acked.items():
                try:
                    stored = client.chat.completions.retrieve(completion_id)
                except openai.NotFoundError:
                    lost.append(completion_id)
                    continue
                if isinstance(text, dict):  # every key the client received, unchanged
                    kept = stored.model_dump(exclude_unset=True)
                    assert {k: kept[k] for k in text} == text
                else:
                    assert stored.choices[0].message.content == text
        print(f"acknowledged {len(acked)}, found {len(acked) - len(lost)}, lost {len(lost)}")
        assert lost == []
    finally:
        sg.stop()
    if fresh_db_url is None:  # SQLite: the file itself must be sound (PostgreSQL has its constraints)
        with closing(sqlite3.connect(sg.db)) as db:
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
