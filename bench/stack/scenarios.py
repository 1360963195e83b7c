"""Definitions of the three scenarios: which servers to start and which targets to load.

Each builder picks free ports, returns a Scenario, and starts nothing itself.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path
from typing import Any

from apps_sqlite import build_db, time_point_reads
from common import CHAT_REQUEST_BODY, COMPLETION_BODY, FRAMEWORK_BODY, SQLITE_BODY_BYTES
from loadgen import Request
from procs import Server, free_port
from scenario import Scenario, Target, log

HERE = Path(__file__).resolve().parent
PY = sys.executable
SNIFFIO_OVERLAY = HERE / ".venv" / "overlay-sniffio"  # `pip install --target` of sniffio, made by ./run


def _server(name: str, argv: list[str], port: int, tmp: Path, env: dict[str, str] | None = None) -> Server:
    return Server(name=name, argv=argv, port=port, log=tmp / f"{name}.log", cwd=str(HERE), env=env)


def _granian_argv(port: int, app: str) -> list[str]:
    return [
        PY,
        "-m",
        "granian",
        "--interface",
        "asgi",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--runtime-threads",
        "1",
        "--loop",
        "uvloop",
        "--http",
        "1",
        "--no-ws",
        "--no-access-log",
        "--log-level",
        "warning",
        "--working-dir",
        str(HERE),
        app,
    ]


def framework_scenario(tmp: Path) -> Scenario:
    get = Request("GET", "/")
    ports = {n: free_port() for n in ("aiohttp", "uvicorn", "granian", "raw")}
    script = str(HERE / "apps_framework.py")
    servers = [
        _server("aiohttp", [PY, script, "aiohttp", str(ports["aiohttp"])], ports["aiohttp"], tmp),
        _server("uvicorn", [PY, script, "uvicorn", str(ports["uvicorn"])], ports["uvicorn"], tmp),
    ]
    targets = [
        Target("aiohttp", "aiohttp.web + uvloop", "aiohttp", get, expect_body=FRAMEWORK_BODY),
        Target(
            "uvicorn", "Starlette on uvicorn (uvloop+httptools)", "uvicorn", get, expect_body=FRAMEWORK_BODY
        ),
    ]
    if importlib.util.find_spec("granian") is not None:
        servers.append(
            _server(
                "granian",
                _granian_argv(ports["granian"], "apps_framework:starlette_app"),
                ports["granian"],
                tmp,
            )
        )
        targets.append(
            Target(
                "granian", "Starlette on granian (ASGI, 1 worker)", "granian", get, expect_body=FRAMEWORK_BODY
            )
        )
    servers.append(_server("raw", [PY, script, "raw", str(ports["raw"])], ports["raw"], tmp))
    targets.append(
        Target(
            "raw", "raw uvloop protocol (wrk ceiling)", "raw", get, conns=(64,), expect_body=FRAMEWORK_BODY
        )
    )
    return Scenario(
        "framework", "1. Server framework floor (GET, fixed ~300 B JSON)", "aiohttp", servers, targets
    )


def proxy_scenario(tmp: Path) -> Scenario:
    post = Request("POST", "/v1/chat/completions", CHAT_REQUEST_BODY)
    p_up, p_a, p_h, p_n = free_port(), free_port(), free_port(), free_port()
    upstream = f"http://127.0.0.1:{p_up}/v1/chat/completions"
    script = str(HERE / "apps_proxy.py")
    # anyio>=4.12 no longer pulls in sniffio, and httpcore 1.0.x then retries a failing
    # `import sniffio` on every lock setup (encode/httpcore#1102). The main httpx row gets
    # sniffio via an overlay (its best case); the fresh-install row runs without it.
    overlay = {"PYTHONPATH": str(SNIFFIO_OVERLAY)}
    servers = [
        _server("upstream", [PY, script, "upstream", str(p_up)], p_up, tmp),
        _server("proxy-aiohttp", [PY, script, "proxy-aiohttp", str(p_a), upstream], p_a, tmp),
        _server("proxy-httpx", [PY, script, "proxy-httpx", str(p_h), upstream], p_h, tmp, overlay),
        _server("proxy-httpx-nosniffio", [PY, script, "proxy-httpx", str(p_n), upstream], p_n, tmp),
    ]
    targets = [
        Target("direct", "direct to upstream (floor)", "upstream", post, expect_body=COMPLETION_BODY),
        Target(
            "aiohttp-client",
            "proxy: aiohttp.ClientSession (limit=100)",
            "proxy-aiohttp",
            post,
            expect_body=COMPLETION_BODY,
        ),
        Target(
            "httpx-client",
            "proxy: httpx.AsyncClient (max_connections=100) + sniffio",
            "proxy-httpx",
            post,
            expect_body=COMPLETION_BODY,
        ),
        Target(
            "httpx-nosniffio",
            "proxy: httpx.AsyncClient, fresh install without sniffio",
            "proxy-httpx-nosniffio",
            post,
            conns=(64,),
            expect_body=COMPLETION_BODY,
        ),
    ]
    if importlib.util.find_spec("granian") is not None:
        p_g = free_port()
        servers.append(
            _server(
                "proxy-granian",
                _granian_argv(p_g, "apps_proxy:granian_proxy_app"),
                p_g,
                tmp,
                {"STACK_BENCH_UPSTREAM": upstream},
            )
        )
        targets.append(
            Target(
                "granian-server",
                "proxy: aiohttp.ClientSession on Starlette/granian",
                "proxy-granian",
                post,
                expect_body=COMPLETION_BODY,
            )
        )
    return Scenario(
        "proxy",
        "2. Proxy client (POST forwarded to a fake upstream, ~600 B reply)",
        "aiohttp-client",
        servers,
        targets,
    )


def sqlite_scenario(tmp: Path) -> Scenario:
    db = tmp / "bench.sqlite"
    t0 = time.monotonic()
    build_db(str(db))
    extra: dict[str, Any] = {
        "db_mb": round(db.stat().st_size / 1e6),
        "build_s": round(time.monotonic() - t0, 1),
    }
    extra["bare_read"] = time_point_reads(str(db))
    log(f"sqlite: built {extra['db_mb']} MB in {extra['build_s']}s; bare read {extra['bare_read']}")
    get = Request("GET", "/read")
    script = str(HERE / "apps_sqlite.py")
    kinds = {
        "direct": "sqlite3 directly on the event loop",
        "thread": "asyncio.to_thread, conn per thread",
        "aiosqlite": "aiosqlite (one connection)",
    }
    servers, targets = [], []
    for kind, label in kinds.items():
        port = free_port()
        servers.append(_server(f"sqlite-{kind}", [PY, script, kind, str(port), str(db)], port, tmp))
        targets.append(Target(kind, label, f"sqlite-{kind}", get, expect_len=SQLITE_BODY_BYTES))
    return Scenario(
        "sqlite", "3. SQLite point read (100k rows, ~1.5 KB blob, WAL)", "direct", servers, targets, extra
    )
