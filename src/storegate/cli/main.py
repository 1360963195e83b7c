"""`storegate serve`: parse flags into Settings and run the server until SIGINT or SIGTERM."""

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence

from storegate import __version__
from storegate.settings import ConfigError, Settings, from_sources


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="storegate", description=__doc__)
    parser.add_argument("--version", action="version", version=f"storegate {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the HTTP server")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default 8000)")
    serve.add_argument("--db", help="database URL, e.g. sqlite:///./storegate.db (the default)")
    serve.add_argument("--backend", dest="backend_url", help="backend base URL including /v1")
    serve.add_argument("--backend-key", help="API key storegate sends to that backend")
    serve.add_argument("--config", help="TOML file with [[backends]] tables")
    serve.add_argument("--store-default", action="store_const", const=True,
                       help="store completions whose request does not say `store`")  # fmt: skip
    serve.add_argument("--max-body-bytes", type=int, help="largest request body accepted (default 16 MiB)")
    serve.add_argument("--backend-connect-timeout", type=float, help="seconds to connect to a backend")
    serve.add_argument("--backend-read-timeout", type=float,
                       help="seconds to wait for a backend's first byte and between stream chunks")  # fmt: skip
    serve.add_argument("--sqlite-synchronous", help="SQLite synchronous pragma: FULL (default) or NORMAL")
    serve.add_argument("--write-queue-max", type=int, help="pending writes before new ones get 503 (10000)")
    serve.add_argument("--shutdown-timeout", type=float, help="seconds SIGTERM waits for in-flight requests")
    serve.add_argument("--retention-days", type=int,
                       help="delete completions older than this many days (default: keep until deleted)")  # fmt: skip
    serve.add_argument("--retention-interval", type=float, help="seconds between retention passes (60)")
    serve.add_argument("--log-level", default=os.environ.get("STOREGATE_LOG_LEVEL", "INFO"))
    db = commands.add_parser("db", help="database maintenance").add_subparsers(
        dest="db_command", required=True
    )
    migrate = db.add_parser("migrate", help="apply pending migrations and exit")
    migrate.add_argument("--db", help="database URL (default: STOREGATE_DB, else sqlite:///./storegate.db)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    level = getattr(args, "log_level", os.environ.get("STOREGATE_LOG_LEVEL", "INFO"))
    logging.basicConfig(level=level.upper(), format="%(message)s", stream=sys.stderr)
    try:
        settings = from_sources(vars(args), os.environ)
        if args.command == "db":
            return asyncio.run(migrate(settings))
    except ConfigError as exc:
        print(f"storegate: {exc}", file=sys.stderr)
        return 2
    return serve(settings)


async def migrate(settings: Settings) -> int:
    from storegate.store import open_store

    store = await open_store(settings)
    try:
        applied = store.migrations_applied
    finally:
        await store.close()
    print(f"applied migrations {applied}" if applied else "the database is up to date")
    return 0


def serve(settings: Settings) -> int:
    from aiohttp import web

    from storegate.app import create_app

    loop: asyncio.AbstractEventLoop
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    log = logging.getLogger("storegate")
    log.info("storegate %s on http://%s:%d, store %s", __version__, settings.host, settings.port,
             settings.db)  # fmt: skip
    try:
        web.run_app(create_app(settings), host=settings.host, port=settings.port, loop=loop, print=None,
                    access_log=None, handler_cancellation=True, shutdown_timeout=settings.shutdown_timeout)  # fmt: skip
    except ConfigError as exc:
        print(f"storegate: {exc}", file=sys.stderr)
        return 2
    return 0
