"""create_app(settings) -> the aiohttp application: wires store, backends, services and routes.

Nothing global: the store and the backends' pools open on start-up and close on clean-up.
"""

import asyncio
import contextlib
import ipaddress
from collections.abc import AsyncIterator

from aiohttp import web

from storegate.api.accesslog import AccessLog
from storegate.api.context import SERVICES, Services
from storegate.api.middleware import ACCESS_LOG, add_request_id, authenticate, handle
from storegate.api.routes import add_routes
from storegate.backends import Backend, Router
from storegate.service import Chat, StoredCompletions
from storegate.service.gate import Gate
from storegate.service.keys import Keys
from storegate.service.retention import Retention
from storegate.settings import ConfigError, Settings
from storegate.store.factory import open_store

SETTINGS = web.AppKey("settings", Settings)


def create_app(settings: Settings) -> web.Application:
    app = web.Application(client_max_size=settings.max_body_bytes, middlewares=[handle, authenticate])
    app[SETTINGS] = settings
    app[ACCESS_LOG] = AccessLog()
    app.cleanup_ctx.append(_lifespan)
    app.on_response_prepare.append(add_request_id)
    add_routes(app)
    return app


async def _lifespan(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    store = await open_store(settings)
    keys = Keys(store, default_rpm=settings.rate_limit_rpm)
    await _check_exposure(settings, keys)
    router = Router([
        Backend(config, connect_timeout=settings.backend_connect_timeout, read_timeout=settings.backend_read_timeout,
                total_timeout=settings.backend_total_timeout)
        for config in settings.backends
    ])  # fmt: skip
    chat = Chat(store, router, store_default=settings.store_default)
    app[SERVICES] = Services(chat=chat, stored=StoredCompletions(store), router=router, store=store, keys=keys,
                             body_timeout=settings.body_timeout, gate=Gate(settings.max_inflight))  # fmt: skip
    retention = Retention(store, days=settings.retention_days, projects=dict(settings.retention_projects),
                          interval=settings.retention_interval)  # fmt: skip
    purging = asyncio.create_task(retention.run_forever()) if retention.enabled else None
    try:
        yield
    finally:
        if purging is not None:
            purging.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await purging
        await router.close()
        await store.close()
        app[ACCESS_LOG].flush()


async def _check_exposure(settings: Settings, keys: Keys) -> None:
    """Without keys, anyone who can connect reads every stored completion: loopback only, unless told."""
    if settings.insecure_no_auth or _is_loopback(settings.host) or await keys.required():
        return
    raise ConfigError(
        f"refusing to listen on {settings.host} without API keys: create one with `storegate keys create"
        " --project NAME`, or pass --insecure-no-auth"
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
