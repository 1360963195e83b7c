"""What handlers reach through the application: the services, built once in create_app."""

from dataclasses import dataclass

from aiohttp import web

from storegate.backends import Router
from storegate.service import Chat, StoredCompletions
from storegate.service.gate import Gate
from storegate.service.keys import DEFAULT_PROJECT, Keys
from storegate.store import Store


@dataclass(frozen=True, slots=True)
class Services:
    chat: Chat
    stored: StoredCompletions
    router: Router
    store: Store
    keys: Keys
    body_timeout: float
    gate: Gate


SERVICES = web.AppKey("services", Services)


def services(request: web.Request) -> Services:
    return request.app[SERVICES]


def project(request: web.Request) -> str:
    value = request.get("project", DEFAULT_PROJECT)
    return value if isinstance(value, str) else DEFAULT_PROJECT


def client_key(request: web.Request) -> str | None:
    """The client's Authorization header, when it is the client's own key and not a storegate key;
    backends with pass_client_key receive it."""
    value = request.get("client_key")
    return value if isinstance(value, str) else None


def request_id(request: web.Request) -> str:
    return str(request["request_id"])
