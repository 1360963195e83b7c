"""Completion and message ids: minted here, sortable in creation order, unique across replicas.

A completion id is `chatcmpl-` + 29 base62 characters: 10 encode the microsecond clock reading that
also gives `created`, 19 are random. The alphabet is in ASCII order, so string order is time order.
"""

import os
import re
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
        digits += os.urandom(32).translate(_DIGIT_OF_BYTE, _REJECTED)
    return digits[:count].decode()


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
