"""Completion and message ids: minted here, sortable in creation order, unique across replicas.

A completion id is `chatcmpl-` + 29 base62 characters: 10 encode the microsecond clock reading that
also gives `created`, 19 are random. The alphabet is in ASCII order, so string order is time order.
"""

import os
import re
import threading
import time
from collections.abc import Callable

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
PREFIX = "chatcmpl-"
_TIME_CHARS = 10  # even: _clock62 writes two digits at a time
_RANDOM_CHARS = 19
COMPLETION_ID = re.compile(r"chatcmpl-[0-9A-Za-z]{29}")
_MESSAGE_ID = re.compile(r"(chatcmpl-[0-9A-Za-z]{29})-(0|[1-9][0-9]{0,8})")


def _base62(value: int, width: int) -> str:
    chars = []
    for _ in range(width):
        value, rem = divmod(value, 62)
        chars.append(ALPHABET[rem])
    return "".join(reversed(chars))


# The clock part, two digits per division (10 digits: 5 divisions, not 10): minting sits on every
# create's path, and the plain loop above made it ~9 us of a create's ~25 us of parsing and checks.
_PAIRS = [a + b for a in ALPHABET for b in ALPHABET]


def _clock62(now_us: int) -> str:
    pairs = []
    for _ in range(_TIME_CHARS // 2):
        now_us, rem = divmod(now_us, 62 * 62)
        pairs.append(_PAIRS[rem])
    return "".join(reversed(pairs))


# The random part: OS random bytes below 248 (= 4 x 62) map to base62 digits without bias, the rest
# are dropped (rejection sampling); 19 digits carry 113 bits, as 19 uniform base62 digits do.
_DIGIT_OF_BYTE = bytes(ord(ALPHABET[b % 62]) for b in range(248)) + bytes(8)
_REJECTED = bytes(range(248, 256))


def _random62(count: int) -> str:
    digits = b""
    while len(digits) < count:  # 32 bytes keep at least 19 of theirs but once in ~10^13 draws
        digits += random_bytes(32).translate(_DIGIT_OF_BYTE, _REJECTED)
    return digits[:count].decode()


# The OS's random bytes, drawn 4 KiB at a time: every request needs 16 for its request id, and a
# create 32 more for its completion id; a getrandom() call apiece sat on the request's path
# (measured, one stream at a time: the request id's share fell ~20 -> ~16 us). The same bytes, in
# bulk; a forked child starts with none of its parent's. Keys' secrets do not come from here.
_RANDOM_CHUNK = 4096
_random = bytearray()
_random_lock = threading.Lock()  # two threads must never take the same bytes


def random_bytes(count: int) -> bytes:
    global _random
    if count <= 0:
        return b""
    with _random_lock:
        if len(_random) < count:
            _random = bytearray(os.urandom(max(count, _RANDOM_CHUNK)))
        taken = bytes(_random[-count:])
        del _random[-count:]
    return taken


def _forget_random() -> None:
    global _random, _random_lock
    _random = bytearray()
    _random_lock = threading.Lock()  # a thread of the parent may have held it at the fork


os.register_at_fork(after_in_child=_forget_random)


def request_id() -> str:
    """`req_` and 32 hex digits (128 random bits), as OpenAI's x-request-id."""
    return "req_" + random_bytes(16).hex()


class IdMinter:
    """Mints strictly increasing ids within one process; the random tail separates replicas."""

    def __init__(self, clock_ns: Callable[[], int] = time.time_ns) -> None:
        self._clock_ns = clock_ns
        self._last_us = 0

    def mint(self) -> tuple[str, int]:
        """Return a new completion id and its `created` (Unix seconds) from the same clock reading."""
        now_us = self._clock_ns() // 1000
        if now_us <= self._last_us:
            now_us = self._last_us + 1
        self._last_us = now_us
        return PREFIX + _clock62(now_us) + _random62(_RANDOM_CHARS), now_us // 1_000_000


def is_completion_id(value: str) -> bool:
    return COMPLETION_ID.fullmatch(value) is not None


_MAX_US = 62**_TIME_CHARS - 1


def id_floor(unix_seconds: int) -> str:
    """The smallest possible id minted at or after `unix_seconds`: ids compare against it as bounds.
    Seconds outside the ids' range (before 1970, after the year 28000) clamp to its ends."""
    return PREFIX + _base62(min(max(unix_seconds, 0) * 1_000_000, _MAX_US), _TIME_CHARS)


def message_id(completion_id: str, index: int) -> str:
    return f"{completion_id}-{index}"


def parse_message_id(value: str, completion_id: str) -> int | None:
    """The message index if `value` names a message of `completion_id`, else None."""
    match = _MESSAGE_ID.fullmatch(value)
    if match is None or match.group(1) != completion_id:
        return None
    return int(match.group(2))
