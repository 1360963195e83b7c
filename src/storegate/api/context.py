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
# What the middlewares (api/middleware.py) put on a request for its handler and its access log line.
REQUEST_ID = web.RequestKey("request_id", str)
PROJECT = web.RequestKey("project", str)  # set once a /v1 request is authenticated
CLIENT_KEY = web.RequestKey("client_key", str)  # the client's own Authorization, when not a storegate key
STREAM_FAILURE = web.RequestKey("stream_failure", str)  # why a stream ended in an error event after its 200


def services(request: web.Request) -> Services:
    return request.app[SERVICES]


def project(request: web.Request) -> str:
    value: str = request.get(PROJECT, DEFAULT_PROJECT)  # (a Request's get() is untyped; its [] is not)
    return value


def client_key(request: web.Request) -> str | None:
    """The client's Authorization header, when it is the client's own key and not a storegate key;
    backends with pass_client_key receive it."""
    value: str | None = request.get(CLIENT_KEY)
    return value


def request_id(request: web.Request) -> str:
    return request[REQUEST_ID]
