"""Completion and message ids: minted here, sortable in creation order, unique across replicas.

A completion id is `chatcmpl-` + 29 base62 characters: 10 encode the microsecond clock reading that
also gives `created`, 19 are random. The alphabet is in ASCII order, so string order is time order.
"""

import re
import secrets
import time
from collections.abc import Callable

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
PREFIX = "chatcmpl-"
_TIME_CHARS = 10
_RANDOM_CHARS = 19
COMPLETION_ID = re.compile(r"chatcmpl-[0-9A-Za-z]{29}")
_MESSAGE_ID = re.compile(r"(chatcmpl-[0-9A-Za-z]{29})-(0|[1-9][0-9]{0,8})")


def _base62(value: int, width: int) -> str:
    chars = []
    for _ in range(width):
        value, rem = divmod(value, 62)
        chars.append(ALPHABET[rem])
    return "".join(reversed(chars))


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
        # 120 random bits folded into 19 base62 digits (113 bits): one read of the OS's randomness.
        tail = _base62(int.from_bytes(secrets.token_bytes(15)), _RANDOM_CHARS)
        return PREFIX + _base62(now_us, _TIME_CHARS) + tail, now_us // 1_000_000


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
