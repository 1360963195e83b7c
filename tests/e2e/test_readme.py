"""The README's first session runs as written: `scripts/serve`, its curl lines and its SDK snippet."""

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes import REPO_ROOT, FakeBackend, free_port

README = (REPO_ROOT / "README.md").read_text()


def _block(language: str, after: str) -> str:
    start = README.index(after)
    match = re.compile(rf"```{language}\n(.*?)```", re.S).search(README, start)
    assert match, f"no {language} block after {after!r}"
    return match.group(1)


@pytest.fixture(scope="module")
def readme_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    with FakeBackend(models=["my-model"]) as fake:
        port = free_port()
        # Run from another directory with a relative --db: the file is made there, not in the repo.
        here = tmp_path_factory.mktemp("readme")
        cmd = [str(REPO_ROOT / "scripts/serve"), "--port", str(port), "--db", "sqlite:///readme.db",
               "--backend", fake.url]  # fmt: skip
        proc = subprocess.Popen(cmd, cwd=here, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 120
            while True:
                assert proc.poll() is None, "scripts/serve exited"
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).close()
                    break
                except OSError:
                    assert time.monotonic() < deadline, "scripts/serve did not start"
                    time.sleep(0.1)
            assert (here / "readme.db").is_file() and not (REPO_ROOT / "readme.db").exists()
            yield port
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(20) == 0, "SIGTERM ends storegate cleanly"


def test_curl_session(readme_server: int) -> None:
    script = _block("bash", "## A first session").replace("127.0.0.1:8000", f"127.0.0.1:{readme_server}")
    out = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert '"object":"chat.completion"' in out.stdout and '"team":"search"' in out.stdout


def test_sdk_session(readme_server: int) -> None:
    script = _block("python", "## A first session").replace("127.0.0.1:8000", f"127.0.0.1:{readme_server}")
    env = {**os.environ, "PYTHONPATH": str(Path(REPO_ROOT))}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    assert "echo: Say hello" in out.stdout and "['Say hello']" in out.stdout
