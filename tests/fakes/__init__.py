"""Test doubles for storegate: ``FakeBackend`` runs ``python -m tests.fakes.backend`` as a subprocess.

Use it as a context manager (or ``start()``/``stop()``); ``.url`` is the base URL ending in ``/v1``.
"""

from __future__ import annotations

import json
import os
import selectors
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

__all__ = ["REPO_ROOT", "FakeBackend", "free_port"]

REPO_ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT = 15.0
STOP_TIMEOUT = 5.0
HTTP_TIMEOUT = 10.0


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (racy by nature; prefer ``--port 0`` where possible)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class FakeBackend:
    """Controller for one fake backend process."""

    def __init__(
        self,
        *,
        strict: bool = False,
        require_key: str | None = None,
        models: list[str] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        startup_timeout: float = STARTUP_TIMEOUT,
    ) -> None:
        self.strict = strict
        self.require_key = require_key
        self.models = models
        self.host = host
        self.port = port
        self.startup_timeout = startup_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None
        self._url: str | None = None

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "tests.fakes.backend", "--host", self.host, "--port", str(self.port)]
        if self.strict:
            cmd.append("--strict")
        if self.require_key is not None:
            cmd += ["--require-key", self.require_key]
        if self.models is not None:
            cmd += ["--models", ",".join(self.models)]
        return cmd

    @property
    def url(self) -> str:
        """Base URL including ``/v1``, e.g. ``http://127.0.0.1:PORT/v1``."""
        if self._url is None:
            raise RuntimeError("FakeBackend is not running")
        return self._url

    @property
    def origin(self) -> str:
        """``http://HOST:PORT`` without the ``/v1`` suffix."""
        return self.url.removesuffix("/v1")

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError("FakeBackend is not running")
        return self._proc.pid

    def start(self) -> Self:
        if self._proc is not None:
            raise RuntimeError("FakeBackend already started")
        # a file, not a pipe: a chatty server can never block on it; closed in stop()
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115
        self._proc = subprocess.Popen(
            self.command(),
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            bufsize=0,
        )
        line = self._read_line(self.startup_timeout)
        if not line.startswith("LISTENING "):
            try:  # stdout hit EOF because the process is exiting: get its exit code
                code: int | None = self._proc.wait(1)
            except subprocess.TimeoutExpired:
                code = None
            why = (
                f"exited with {code}" if code is not None else f"no LISTENING line in {self.startup_timeout}s"
            )
            logs = self.logs()
            self.stop()
            raise RuntimeError(f"fake backend did not start ({why}): stdout={line!r}\nstderr:\n{logs}")
        self._url = line.split()[1]
        return self

    def _read_line(self, timeout: float) -> str:
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        buf = b""
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while b"\n" not in buf:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not sel.select(remaining):
                    break
                data = os.read(fd, 4096)
                if not data:
                    break
                buf += data
        return buf.decode(errors="replace").strip()

    def logs(self) -> str:
        """Everything the process wrote to stderr so far."""
        if self._stderr is None or self._stderr.closed:
            return ""
        self._stderr.flush()
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    def stop(self) -> None:
        """SIGTERM the process by PID, wait up to 5 s, then SIGKILL; close the pipes. Idempotent."""
        proc, self._proc, self._url = self._proc, None, None
        try:
            if proc is not None:
                if proc.poll() is None:
                    proc.terminate()
                    try:
                        proc.wait(STOP_TIMEOUT)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()
                if proc.stdout is not None:
                    proc.stdout.close()
        finally:
            if self._stderr is not None:
                self._stderr.close()
                self._stderr = None

    def _call(self, method: str, path: str) -> Any:
        req = urllib.request.Request(self.origin + path, method=method)
        with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT) as resp:
            return json.loads(resp.read())

    def requests(self) -> list[dict[str, Any]]:
        """Chat requests received so far: ``[{"body": <parsed JSON or None>, "authorization": str | None}]``."""
        result: list[dict[str, Any]] = self._call("GET", "/_fake/requests")
        return result

    def clear(self) -> None:
        """Forget the recorded requests."""
        self._call("DELETE", "/_fake/requests")

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"FakeBackend(url={self._url!r}, strict={self.strict}, require_key={self.require_key!r})"
