"""The official `openai` Node SDK drives storegate unchanged (CONTRACT.md: "Clients that must work
unchanged"), on each store.

tests/node/sdk_session.mjs walks every stored-completion method with the SDK pinned in
tests/node/package.json (create, streamed create, retrieve, list by metadata and model,
auto-pagination, update, messages.list, delete, the 404 of a deleted id) and prints
`NODE_SDK_OK <checks>`. The SDK is installed once per session with `npm ci` from the lockfile when
tests/node/node_modules is missing or older than it. Without node and npm the test is skipped, except
in CI, where it fails.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from tests.fakes import REPO_ROOT
from tests.server import Storegate

NODE_DIR = REPO_ROOT / "tests" / "node"
SCRIPT = NODE_DIR / "sdk_session.mjs"
LOCKFILE = NODE_DIR / "package-lock.json"
NODE_MODULES = NODE_DIR / "node_modules"
INSTALL_TIMEOUT = 180.0
SESSION_TIMEOUT = 90.0
OK_LINE = re.compile(r"^NODE_SDK_OK (\d+)$", re.MULTILINE)


def needs_install() -> bool:
    """True when node_modules is missing or older than the lockfile (npm ci rewrites it whole)."""
    installed = NODE_MODULES / ".package-lock.json"  # written by every npm install / npm ci
    stamp = installed if installed.exists() else NODE_MODULES
    return not stamp.exists() or stamp.stat().st_mtime < LOCKFILE.stat().st_mtime


@pytest.fixture(scope="session")
def node() -> str:
    """The node executable, with the SDK installed in tests/node from its lockfile."""
    node_bin, npm_bin = shutil.which("node"), shutil.which("npm")
    if node_bin is None or npm_bin is None:
        absent = [name for name, path in (("node", node_bin), ("npm", npm_bin)) if path is None]
        missing = " and ".join(absent) + (" are" if len(absent) > 1 else " is")
        if os.environ.get("CI"):
            pytest.fail(f"The Node SDK test is required in CI, but {missing} not on PATH")
        pytest.skip(f"{missing} not on PATH: the official Node SDK test needs node and npm")
    if needs_install():
        try:
            result = subprocess.run(
                [npm_bin, "ci", "--no-audit", "--no-fund"],
                cwd=NODE_DIR,
                capture_output=True,
                text=True,
                timeout=INSTALL_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired:
            pytest.fail(f"npm ci in {NODE_DIR} did not finish within {INSTALL_TIMEOUT:.0f} s")
        assert result.returncode == 0, (
            f"npm ci failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        )
    return node_bin


@pytest.mark.timeout(INSTALL_TIMEOUT + SESSION_TIMEOUT + 30)  # the first run's npm ci counts too
def test_node_sdk_session(node: str, server: Storegate) -> None:
    result = subprocess.run(
        [node, str(SCRIPT), server.url + "/v1"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=SESSION_TIMEOUT,
        check=False,
    )
    output = f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.returncode == 0, f"node exited {result.returncode}\n{output}"
    match = OK_LINE.search(result.stdout)
    assert match is not None, f"no NODE_SDK_OK line\n{output}"
    assert int(match.group(1)) > 0, output
