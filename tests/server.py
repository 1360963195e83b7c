"""Runs a real `storegate serve` process for end-to-end tests, and an openai SDK client whose every
non-streamed response is validated against OpenAI's spec (tests/spec.py)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import IO, Any

import httpx2 as httpx
import openai

from tests.fakes import REPO_ROOT, free_port
from tests.spec import spec

_ROUTES = [
    ("POST", re.compile(r"/v1/chat/completions"), "createChatCompletion"),
    ("GET", re.compile(r"/v1/chat/completions"), "listChatCompletions"),
    ("GET", re.compile(r"/v1/chat/completions/[^/]+/messages"), "getChatCompletionMessages"),
    ("GET", re.compile(r"/v1/chat/completions/[^/]+"), "getChatCompletion"),
    ("POST", re.compile(r"/v1/chat/completions/[^/]+"), "updateChatCompletion"),
    ("DELETE", re.compile(r"/v1/chat/completions/[^/]+"), "deleteChatCompletion"),
]


def operation_id(method: str, path: str) -> str | None:
    for verb, pattern, op in _ROUTES:
        if verb == method and pattern.fullmatch(path):
            return op
    return None


def check_response(response: httpx.Response) -> None:
    """Validate a response against the spec: the operation's schema, or the error envelope."""
    assert response.headers.get("x-request-id", "").startswith("req_"), "every response has x-request-id"
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        return  # streams are validated chunk by chunk by the tests that read them
    response.read()
    op = operation_id(response.request.method, response.request.url.path)
    if op is not None:
        spec().validate_response(op, response.status_code, response.json())
    elif response.status_code >= 400:
        spec().validate_response("getChatCompletion", response.status_code, response.json())


class Storegate:
    """One server process on a free port; `restart()` keeps its database file."""

    def __init__(
        self,
        backend_url: str | None,
        *,
        db_url: str | None = None,
        args: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="storegate-test-"))
        self.db = self.dir / "storegate.db"
        self.db_url = db_url or f"sqlite:///{self.db}"
        self.backend_url = backend_url
        self.args = args or []
        self.env = env or {}
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> Storegate:
        self.port = free_port()
        cmd = [
            sys.executable,
            "-m",
            "storegate",
            "serve",
            "--port",
            str(self.port),
            "--db",
            self.db_url,
        ]
        if self.backend_url:
            cmd += ["--backend", self.backend_url]
        self._log = (self.dir / "server.log").open("ab")
        env = {**os.environ, **self.env}
        self.proc = subprocess.Popen(
            cmd + self.args, cwd=REPO_ROOT, stdout=self._log, stderr=self._log, env=env
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"storegate exited {self.proc.returncode}:\n{self.logs()}")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=1) as resp:
                    if resp.status == 200:
                        return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"storegate did not become healthy:\n{self.logs()}")

    def logs(self) -> str:
        path = self.dir / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.proc.returncode

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def restart(self) -> Storegate:
        self.stop()
        return self.start()

    def client(self, api_key: str = "sk-test", **kwargs: Any) -> openai.OpenAI:
        http = httpx.Client(event_hooks={"response": [check_response]}, timeout=30)
        return openai.OpenAI(base_url=self.url + "/v1", api_key=api_key, max_retries=0, http_client=http,
                             **kwargs)  # fmt: skip

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run `storegate ARGS --db <this server's database>`."""
        cmd = [sys.executable, "-m", "storegate", *args, "--db", self.db_url]
        return subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False)

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, event_hooks={"response": [check_response]})
