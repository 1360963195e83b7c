"""API keys and projects: minting, hashing, and turning a request's Authorization into a project.

Only a key's SHA-256 is stored (keys are 256-bit random, so a slow hash adds nothing). With no
active key anywhere, every request belongs to the one local project.
"""

import asyncio
import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from storegate.errors import InvalidRequest, Unauthorized
from storegate.service.ratelimit import RateLimiter
from storegate.store import ApiKey, Store

DEFAULT_PROJECT = "default"
_PREFIX = "sg-"
_TOUCH_EVERY = 60.0
_PROJECT_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_.")


@dataclass(frozen=True, slots=True)
class Principal:
    project: str
    key_id: str | None


def hash_secret(secret: str) -> bytes:
    # Headers arrive decoded with surrogateescape: hash the bytes the client sent, whatever they are.
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).digest()


def check_project(name: str) -> str:
    if not 1 <= len(name) <= 64 or not set(name) <= _PROJECT_CHARS:
        raise InvalidRequest("a project name is 1 to 64 of a-z, 0-9, '-', '_' and '.'", param="project")
    return name


class Keys:
    def __init__(self, store: Store, *, default_rpm: int = 0, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._limiter = RateLimiter(clock)
        self._default_rpm = default_rpm
        self._clock = clock
        self._touched: dict[str, float] = {}
        self._pending: set[asyncio.Task[None]] = set()

    async def create(self, project: str, rpm: int | None = None) -> tuple[ApiKey, str]:
        """A new key; its secret is returned once and never stored."""
        secret = _PREFIX + secrets.token_urlsafe(32)
        key = ApiKey(id="key_" + secrets.token_hex(8), project=check_project(project), prefix=secret[:7],
                     rpm=rpm, created=int(self._clock()), last_used=None, revoked=None)  # fmt: skip
        await self._store.add_key(key, hash_secret(secret))
        return key, secret

    async def authenticate(self, authorization: str | None) -> Principal:
        """The caller's project; raises Unauthorized (401) or RateLimited (429)."""
        scheme, _, secret = (authorization or "").partition(" ")
        secret = secret.strip() if scheme.lower() == "bearer" else ""
        key, any_active = await self._store.find_key(hash_secret(secret)) if secret else (None, None)
        if key is not None and key.revoked is None:
            self._limiter.take(key.id, key.rpm if key.rpm is not None else self._default_rpm)
            self._touch(key.id)
            return Principal(key.project, key.id)
        if any_active is None:
            any_active = await self.any_active()
        if not any_active:
            return Principal(DEFAULT_PROJECT, None)
        if not secret:
            raise Unauthorized(
                "You didn't provide an API key. You need to provide your API key in an Authorization header"
                " using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
            )
        raise Unauthorized("Incorrect API key provided.", code="invalid_api_key")

    async def any_active(self) -> bool:
        # No key has the empty hash: this only asks whether any key is active.
        _, active = await self._store.find_key(b"")
        return active

    def _touch(self, key_id: str) -> None:
        now = self._clock()
        if now - self._touched.get(key_id, 0.0) < _TOUCH_EVERY:
            return
        self._touched[key_id] = now
        task = asyncio.ensure_future(self._store.touch_key(key_id, int(now)))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
