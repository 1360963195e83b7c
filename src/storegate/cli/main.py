"""The storegate command: `serve`, `keys create|list|revoke`, `db migrate|compact`."""

import argparse
import asyncio
import gc
import logging
import os
import resource
import sys
from collections.abc import Sequence

from storegate import __version__
from storegate.cli.admin import compact, create_key, list_keys, migrate, revoke_key
from storegate.errors import StoregateError
from storegate.settings import EVENT_LOOPS, ConfigError, Settings, from_sources

_DB_HELP = "database URL (default: STOREGATE_DB, else sqlite:///./storegate.db)"


def _serve_flags(serve: argparse.ArgumentParser) -> None:
    add = serve.add_argument
    add("--host", help="address to listen on (default 127.0.0.1)")
    add("--port", type=int, help="port to listen on (default 8000)")
    add("--db", help=_DB_HELP)
    add("--backend", dest="backend_url", help="backend base URL including /v1")
    add("--backend-key", help="API key storegate sends to that backend")
    add("--config", help="TOML file with [[backends]] tables and [retention.projects]")
    add("--store-default", action="store_const", const=True, help="store requests that do not say `store`")
    add("--max-body-bytes", type=int, help="largest request body accepted (default 16 MiB)")
    add("--body-timeout", type=float, help="seconds a client has to send its request body (30)")
    add("--backend-connect-timeout", type=float, help="seconds to connect to a backend")
    add("--backend-read-timeout", type=float, help="seconds to a backend's first byte and between chunks")
    add("--backend-total-timeout", type=float, help="seconds for a whole backend answer (default: none)")
    add("--max-inflight", type=int, help="creates in flight before new ones get 503 (1000)")
    add("--sqlite-synchronous", help="SQLite synchronous pragma: FULL (default), EXTRA or NORMAL")
    add("--sqlite-cache-mib", type=int, help="SQLite page cache per connection, in MiB (64)")
    add(
        "--event-loop",
        choices=EVENT_LOOPS,
        help="uvloop (default) or asyncio (even read latency at saturation)",
    )
    add("--write-queue-max", type=int, help="pending writes before new ones get 503 (10000)")
    add("--sqlite-writer-hang-timeout", type=float,
        help="seconds the SQLite writer may answer nothing while writes wait before it is killed (30)")  # fmt: skip
    add("--shutdown-timeout", type=float, help="seconds SIGTERM waits for in-flight requests")
    add("--retention-days", type=int, help="delete completions older than this (default: keep)")
    add("--retention-interval", type=float, help="seconds between retention passes (60)")
    add("--rate-limit-rpm", type=int, help="requests per minute per key unless the key says (0: none)")
    add("--insecure-no-auth", action="store_const", const=True,
        help="serve a non-loopback address without API keys")  # fmt: skip
    add("--log-level", default=os.environ.get("STOREGATE_LOG_LEVEL", "INFO"))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="storegate", description=__doc__)
    parser.add_argument("--version", action="version", version=f"storegate {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    _serve_flags(commands.add_parser("serve", help="run the HTTP server"))
    keys = commands.add_parser("keys", help="API keys").add_subparsers(dest="action", required=True)
    create = keys.add_parser("create", help="create a key; prints the secret once, as the last line")
    create.add_argument("--project", required=True)
    create.add_argument("--rpm", type=int, help="requests per minute for this key (default: the server's)")
    keys.add_parser("list", help="list keys (never their secrets)")
    revoke = keys.add_parser("revoke", help="revoke a key at once, for every replica")
    revoke.add_argument("key_id")
    db = commands.add_parser("db", help="database maintenance").add_subparsers(dest="action", required=True)
    db.add_parser("migrate", help="apply pending migrations and exit")
    db.add_parser(
        "compact", help="SQLite: migrate, then rewrite the file (VACUUM) on 8 KiB pages; no server may use it"
    )
    for sub in (create, keys.choices["list"], revoke, db.choices["migrate"], db.choices["compact"]):
        sub.add_argument("--db", help=_DB_HELP)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    level = getattr(args, "log_level", None) or os.environ.get("STOREGATE_LOG_LEVEL", "WARNING")
    logging.basicConfig(level=level.upper(), format="%(message)s", stream=sys.stderr)
    try:
        settings = from_sources(vars(args), os.environ)
        if args.command == "serve":
            return serve(settings)
        if args.command == "db":
            return asyncio.run(migrate(settings) if args.action == "migrate" else compact(settings))
        if args.action == "create":
            return asyncio.run(create_key(settings, args.project, args.rpm))
        if args.action == "list":
            return asyncio.run(list_keys(settings))
        return asyncio.run(revoke_key(settings, args.key_id))
    except (ConfigError, StoregateError) as exc:
        print(f"storegate: {exc}", file=sys.stderr)
        return 2


def serve(settings: Settings) -> int:
    from aiohttp import web

    from storegate.api.accesslog import UnparsedRequests
    from storegate.app import create_app

    logging.getLogger("aiohttp.server").addFilter(UnparsedRequests())  # never a request's bytes in a log
    loop = _event_loop(settings.event_loop)
    asyncio.set_event_loop(loop)
    _raise_open_files_limit()
    logging.getLogger("storegate").info(
        "storegate %s starting: http://%s:%d, store %s, event loop %s", __version__, settings.host, settings.port,
        settings.db.split("@")[-1], settings.event_loop,  # never a password from the URL
    )  # fmt: skip
    app = create_app(settings)
    app.on_startup.append(_settle_gc)  # after the app's own startup: the store is open, the services built
    web.run_app(app, host=settings.host, port=settings.port, loop=loop, print=None,
                access_log=None, handler_cancellation=True, shutdown_timeout=settings.shutdown_timeout)  # fmt: skip
    return 0


GC_YOUNG_THRESHOLD = 50_000


async def _settle_gc(app: object) -> None:
    """Keep the cycle collector off the request path (measured on CPython 3.11: bench/analysis/
    2026-11-27T1524Z.md). With the default threshold of 700 net allocations, the objects of 64
    creates in flight set off a young collection every ~16 creates (~0.57 ms of CPU each, ~50 us a
    create), and about once a second a full one walked every object made since import (~27 ms, the
    event loop stalled).

    So: collect once, freeze what startup made (a full collection no longer walks it; anything frozen
    is never collected, and startup's objects live as long as the process), and let young objects
    reach 50,000 before a collection (at 64 connections 5,000 already left two collections in 6 s;
    long streams keep more objects alive at once). A successful request or stream makes no cyclic
    garbage. A failed stream leaves ~15 small objects in a cycle (its backend connection and parser,
    two futures, the error), none of the request's data (backends/stream.py `finish`,
    service/streaming.py); aiohttp's 404 and 405 answers leave ~50. Those wait for a collection: at
    most ~50,000 objects of them."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


def _event_loop(kind: str) -> asyncio.AbstractEventLoop:
    """uvloop by default. Measured: on asyncio's loop, creates serve 0-8% fewer requests, and 64
    concurrent streams wait a little longer for their first chunk (bench/ttft_legs.py, 2026-11-26
    12:10Z: +0.8 ms over direct, against +0.0 on uvloop). But once the loop is saturated, uvloop
    answers some connections far later than others: list p99 176 ms against 38 ms on asyncio's loop
    (bench/ab, c=64), and the same on a bare aiohttp handler (p99 up to 211 ms, max 490 ms; 35 and
    52 ms on asyncio's)."""
    if kind == "uvloop":
        try:
            import uvloop
        except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
            raise ConfigError("--event-loop uvloop: uvloop is not installed") from None
        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def _raise_open_files_limit() -> None:
    """Thousands of idle clients must not starve the rest: allow as many sockets as the system does."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
