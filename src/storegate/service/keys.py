"""API keys and projects: minting, hashing, and turning a request's Authorization into a project.

Only a key's SHA-256 is stored (keys are 256-bit random, so a slow hash adds nothing). Until the
first key is created, every request belongs to the one local project; from then on every request
needs a valid key, even after every key has been revoked (revoking must never open the door).

What the store said about a key is remembered for as long as the store's key epoch stays the same
(`Store.key_epoch`: SQLite's key generation counter, PostgreSQL's count of key-change
notifications), so a request costs no key lookup, and a key created or revoked by any process or
replica is seen on the next request after the epoch moves.
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
_CACHE_MAX = 4096  # remembered lookups (wrong keys too) before the memory starts over
_ANY = b""  # no key hashes to the empty string: the cache's slot for "are keys required?"
_PROJECT_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_.")


@dataclass(frozen=True, slots=True)
class Principal:
    project: str
    key_id: str | None


_DEFAULT = Principal(DEFAULT_PROJECT, None)


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
        self._known: dict[bytes, tuple[ApiKey | None, bool]] = {}
        self._known_epoch: object = None
        # What whole Authorization headers were found to be under _known_epoch: the key of each
        # header that named a live key, and whether no key is required at all (then every header is
        # the default project). `known()` answers from these without hashing or awaiting. The
        # headers of live keys stay in memory (never stored, never logged) until the epoch moves.
        self._headers: dict[str | None, tuple[Principal, ApiKey]] = {}
        self._open = False

    async def create(self, project: str, rpm: int | None = None) -> tuple[ApiKey, str]:
        """A new key; its secret is returned once and never stored."""
        secret = _PREFIX + secrets.token_urlsafe(32)
        key = ApiKey(id="key_" + secrets.token_hex(8), project=check_project(project), prefix=secret[:7],
                     rpm=rpm, created=int(self._clock()), last_used=None, revoked=None)  # fmt: skip
        await self._store.add_key(key, hash_secret(secret))
        return key, secret

    def known(self, authorization: str | None) -> Principal | None:
        """The caller's project when this exact header was already accepted while the store's key
        epoch stood still, its key's rate limit and last use counted as `authenticate` would; None
        when it must go through `authenticate`. Synchronous: the hot path's authentication is two
        dict lookups (a retrieve's cost inside the app, no network, went ~50 -> ~40 us).
        Raises RateLimited (429)."""
        epoch = self._store.key_epoch()
        if epoch is None or epoch != self._known_epoch:
            return None
        if self._open:
            return _DEFAULT
        hit = self._headers.get(authorization)
        if hit is None:
            return None
        principal, key = hit
        self._spend(key)
        return principal

    async def authenticate(self, authorization: str | None) -> Principal:
        """The caller's project; raises Unauthorized (401) or RateLimited (429)."""
        epoch = self._store.key_epoch()
        scheme, _, secret = (authorization or "").partition(" ")
        secret = secret.strip() if scheme.lower() == "bearer" else ""
        key, required = await self._find(hash_secret(secret) if secret else _ANY)
        # What `_find` remembered stands for this epoch only if keys did not move meanwhile.
        remember = epoch is not None and epoch == self._known_epoch and self._store.key_epoch() == epoch
        if key is not None and key.revoked is None:
            self._spend(key)
            principal = Principal(key.project, key.id)
            if remember:
                self._headers[authorization] = (principal, key)
            return principal
        if not required:
            if remember:
                self._open = True
            return _DEFAULT
        if not secret:
            raise Unauthorized(
                "You didn't provide an API key. You need to provide your API key in an Authorization header"
                " using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
            )
        raise Unauthorized("Incorrect API key provided.", code="invalid_api_key")

    async def required(self) -> bool:
        """Whether any key was ever created here: from then on every request needs a valid key, even
        once every key is revoked (fail closed; a revoked key never reopens a server)."""
        _, required = await self._find(_ANY)
        return required

    async def _find(self, secret_hash: bytes) -> tuple[ApiKey | None, bool]:
        """The store's `find_key`, answered from memory while the store's key epoch stands still."""
        epoch = self._store.key_epoch()
        if epoch is not None and epoch == self._known_epoch:
            known = self._known.get(secret_hash)
            if known is not None:
                return known
        found = await self._store.find_key(secret_hash)
        # Remember only what was read within one epoch: if keys moved during the lookup, the next
        # request asks again.
        if epoch is not None and self._store.key_epoch() == epoch:
            if epoch != self._known_epoch or len(self._known) + len(self._headers) >= _CACHE_MAX:
                self._known = {}
                self._headers = {}
                self._open = False
                self._known_epoch = epoch
            self._known[secret_hash] = found
        return found

    def _spend(self, key: ApiKey) -> None:
        """One request of a live key: its rate limit (RateLimited, 429) and its last-use stamp."""
        self._limiter.take(key.id, key.rpm if key.rpm is not None else self._default_rpm)
        self._touch(key.id)

    def _touch(self, key_id: str) -> None:
        now = self._clock()
        if now - self._touched.get(key_id, 0.0) < _TOUCH_EVERY:
            return
        self._touched[key_id] = now
        task = asyncio.ensure_future(self._store.touch_key(key_id, int(now)))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
