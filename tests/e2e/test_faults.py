"""Faults around storegate, produced for real: the database going away, writes failing, SIGTERM
mid-stream, overload, and thousands of idle connections. Nothing acknowledged is lost."""

import json
import resource
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import pytest

from tests.fakes import FakeBackend
from tests.pg import PostgresServer, pg_bin
from tests.server import Storegate
from tests.spec import parse_sse

BODY = {"model": "fake-model", "store": True, "messages": [{"role": "user", "content": "fault"}]}


def _hammer(url: str, stop: threading.Event, acked: list[str], statuses: list[int]) -> None:
    with httpx.Client(base_url=url, timeout=15) as http:
        for _ in range(5000):
            if stop.is_set():
                return
            try:
                resp = http.post("/v1/chat/completions", json=BODY)
            except httpx.HTTPError:
                statuses.append(0)
                continue
            statuses.append(resp.status_code)
            if resp.status_code == 200:
                acked.append(resp.json()["id"])
            else:
                assert resp.status_code == 503 and resp.headers["Retry-After"], resp.text
                time.sleep(0.02)


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    bin_dir = pg_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL is not installed")
    pg = PostgresServer(bin_dir).start()
    yield pg
    pg.stop()


def test_postgres_restart_under_load(fake: FakeBackend, own_postgres: PostgresServer) -> None:
    sg = Storegate(fake.url, db_url=own_postgres.create_database()).start()
    acked: list[str] = []
    statuses: list[int] = []
    stop = threading.Event()
    worker = threading.Thread(target=_hammer, args=(sg.url, stop, acked, statuses))
    try:
        worker.start()
        time.sleep(1)
        own_postgres.halt()
        with httpx.Client(base_url=sg.url, timeout=15) as http:
            down = http.post("/v1/chat/completions", json=BODY)
            assert down.status_code == 503 and down.headers["Retry-After"] == "1"
            assert http.get("/readyz").status_code == 503
            assert http.get("/healthz").status_code == 200
            time.sleep(1)
            own_postgres.resume()
            deadline = time.monotonic() + 20
            while http.get("/readyz").status_code != 200:
                assert time.monotonic() < deadline, "storegate did not reconnect"
                time.sleep(0.1)
            time.sleep(1)
        stop.set()
        worker.join(30)
        assert 503 in statuses and statuses[-1] == 200, "it answered 503 while down and recovered by itself"
        with sg.client() as client:
            for cid in acked:
                assert client.chat.completions.retrieve(cid).id == cid
    finally:
        stop.set()
        sg.stop()


def test_revocation_still_reaches_a_server_after_postgres_restarts(
    fake: FakeBackend, own_postgres: PostgresServer
) -> None:
    """The server remembers keys while PostgreSQL's notifications reach it; after a restart it must
    listen again (or not remember at all) so that a revocation is still seen on the next request."""
    sg = Storegate(fake.url, db_url=own_postgres.create_database())
    secrets = []
    for project in ("a", "b"):
        out = sg.cli("keys", "create", "--project", project)
        assert out.returncode == 0, out.stderr
        secrets.append(out.stdout.strip().splitlines()[-1])
    key_id = next(w for w in sg.cli("keys", "list").stdout.split() if w.startswith("key_"))
    sg.start()
    try:
        with httpx.Client(base_url=sg.url, timeout=15) as http:
            auth = [{"Authorization": f"Bearer {s}"} for s in secrets]
            for _ in range(3):
                assert [http.get("/v1/chat/completions", headers=h).status_code for h in auth] == [200, 200]
            own_postgres.halt()
            assert http.get("/v1/chat/completions", headers=auth[0]).status_code == 503
            own_postgres.resume()
            deadline = time.monotonic() + 20
            while http.get("/readyz").status_code != 200:
                assert time.monotonic() < deadline, "storegate did not reconnect"
                time.sleep(0.1)
            for _ in range(3):
                assert [http.get("/v1/chat/completions", headers=h).status_code for h in auth] == [200, 200]
            assert sg.cli("keys", "revoke", key_id).returncode == 0
            statuses = [http.get("/v1/chat/completions", headers=h).status_code for h in auth]
            assert sorted(statuses) == [200, 401], "exactly the revoked one of the two keys fails"
    finally:
        sg.stop()


def _limit_file_size(pid: int, size: int | str) -> None:
    """Set the soft limit on file size of a running process (the hard one may not be raised again)."""
    subprocess.run(["prlimit", f"--pid={pid}", f"--fsize={size}:"], check=True)


def _writer_pid(pid: int) -> int:
    """The SQLite writer process of the storegate server `pid`: its one child."""
    children = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text() if entry.name.isdigit() else ""
        except OSError:  # gone meanwhile
            continue
        if stat and int(stat[stat.rfind(")") + 2 :].split()[1]) == pid:
            children.append(int(entry.name))
    assert len(children) == 1, children
    return children[0]


def test_sqlite_write_failure_is_503_and_recovers(fake: FakeBackend) -> None:
    sg = Storegate(fake.url).start()
    assert sg.proc is not None
    try:
        with httpx.Client(base_url=sg.url, timeout=15) as http:
            before = http.post("/v1/chat/completions", json=BODY).json()["id"]
            writer = _writer_pid(sg.proc.pid)
            _limit_file_size(writer, 1)  # the disk is "full": no file may grow
            failed = [
                http.post("/v1/chat/completions", json={**BODY, "metadata": {"i": str(i)}}) for i in range(5)
            ]
            assert {r.status_code for r in failed} == {503}
            assert all(
                r.json()["error"]["type"] == "store_unavailable" and r.headers["Retry-After"] for r in failed
            )
            assert http.get(f"/v1/chat/completions/{before}").status_code == 200, "reads still work"
            _limit_file_size(writer, "unlimited")
            after = http.post("/v1/chat/completions", json=BODY)
            assert after.status_code == 200
            ids = [c["id"] for c in http.get("/v1/chat/completions?limit=100").json()["data"]]
            assert ids == [before, after.json()["id"]], "the refused ones were not stored"
        # The access log says why each failed (the lines of a pass are written once it ends: those
        # of the failed requests are out once later requests were answered).
        lines = [json.loads(line) for line in sg.logs().splitlines() if line.startswith('{"request_id"')]
        assert sorted(line["error"] for line in lines if line["status"] == 503) == sorted(
            r.json()["error"]["message"] for r in failed
        )
        assert all("error" not in line for line in lines if line["status"] < 500)
        assert all(r.json()["error"]["message"].startswith("the store could not write: ") for r in failed)
    finally:
        sg.stop()


def test_sigterm_finishes_streams_and_exits_zero(fake: FakeBackend) -> None:
    sg = Storegate(fake.url).start()
    long = " ".join(f"w{i}" for i in range(60))  # ~60 chunks at 20 ms each
    body = {
        **BODY,
        "model": "fake-model+slow",
        "stream": True,
        "messages": [{"role": "user", "content": long}],
    }
    with httpx.Client(base_url=sg.url, timeout=30) as http, http.stream("POST", "/v1/chat/completions",
                                                                        json=body) as resp:  # fmt: skip
        raw = b""
        for piece in resp.iter_bytes():
            raw += piece
            if raw.count(b"data:") == 3:
                assert sg.proc is not None
                sg.proc.send_signal(signal.SIGTERM)
        chunks, done = parse_sse(raw)
    assert done and "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == "echo: " + long
    assert sg.proc is not None and sg.proc.wait(20) == 0
    sg.stop()
    sg.start()
    try:
        with sg.client() as client:
            assert (
                client.chat.completions.retrieve(chunks[0]["id"]).choices[0].message.content
                == "echo: " + long
            )
    finally:
        sg.stop()


def test_overload_sheds_with_503(fake: FakeBackend) -> None:
    sg = Storegate(fake.url, args=["--max-inflight", "2"]).start()
    slow = {**BODY, "model": "fake-model+fault-stall", "stream": True}
    try:
        a, b, c = (httpx.Client(base_url=sg.url, timeout=30) for _ in range(3))
        with a, b, c:
            with (
                a.stream("POST", "/v1/chat/completions", json=slow),
                b.stream("POST", "/v1/chat/completions", json=slow),
            ):
                shed = c.post("/v1/chat/completions", json=BODY)
                assert shed.status_code == 503 and shed.json()["error"]["type"] == "overloaded"
                assert shed.headers["Retry-After"] == "1"
                assert c.get("/v1/chat/completions").status_code == 200, "reads are not shed"
            deadline = (
                time.monotonic() + 5
            )  # the server frees the slots once it sees the streams' clients left
            while (status := c.post("/v1/chat/completions", json=BODY).status_code) == 503:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            assert status == 200
    finally:
        sg.stop()


def test_thousands_of_idle_connections_do_not_stop_service(server: Storegate) -> None:
    wanted = 2000
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < wanted + 100:
        pytest.skip("this process may not open enough sockets")
    idle = []
    try:
        for _ in range(wanted):
            idle.append(socket.create_connection(("127.0.0.1", server.port), timeout=10))
        with httpx.Client(base_url=server.url, timeout=10) as http:
            started = time.monotonic()
            assert http.post("/v1/chat/completions", json=BODY).status_code == 200
            assert time.monotonic() - started < 5
    finally:
        for sock in idle:
            sock.close()


def test_clients_that_leave_early_leave_nothing_behind(server: Storegate) -> None:
    cancelled = server.logs().count('"status":499')
    with httpx.Client(base_url=server.url, timeout=10) as http:
        before = len(http.get("/v1/chat/completions?limit=100&metadata[left]=1").json()["data"])
    # Mid-request: half a body, then gone.
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 500\r\n\r\n{\"model\": \"fake-model\", \"store\": true, ")  # fmt: skip
    # Before reading the answer: the backend is still thinking when the client goes.
    slow = {**BODY, "model": "fake-model+fault-timeout", "metadata": {"left": "1"}}
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        payload = httpx.Request("POST", server.url + "/v1/chat/completions", json=slow).read()
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload)  # fmt: skip
        time.sleep(0.3)
    deadline = time.monotonic() + 5
    while (
        server.logs().count('"status":499') == cancelled
    ):  # storegate saw the client go, dropped its request
        assert time.monotonic() < deadline, "the abandoned request was not cancelled"
        time.sleep(0.05)
    with httpx.Client(base_url=server.url, timeout=10) as http:
        after = http.get("/v1/chat/completions?limit=100&metadata[left]=1").json()["data"]
        assert len(after) == before, "nothing was produced, so nothing was stored"
        assert http.post("/v1/chat/completions", json=BODY).status_code == 200
