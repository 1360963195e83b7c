"""The access log: one JSON line per request on stderr, written once per pass of the event loop.

Measured in bench/ (GET /healthz at 64 connections): sending each line through `logging` (a
LogRecord, the caller's frame, a lock, a formatter, a flush, one write() per line) cost 50-75 us of
CPU per request, a third of a bare request. Here a request only appends its line; the first line of a
pass schedules one write of every line of that pass, which runs as soon as the pass's other callbacks
have (the same pass that sends their responses). The level still comes from logging: lines are kept
only while the "storegate.access" logger is enabled for INFO (`--log-level`).
"""

import asyncio
import logging
import os
import sys

from aiohttp.http_exceptions import HttpProcessingError

log = logging.getLogger("storegate.access")


class AccessLog:
    def __init__(self) -> None:
        self._pending: list[bytes] = []

    @staticmethod
    def enabled() -> bool:
        return log.isEnabledFor(logging.INFO)

    def add(self, line: bytes) -> None:
        if not self._pending:
            asyncio.get_running_loop().call_soon(self.flush)
        self._pending.append(line)

    def flush(self) -> None:
        if not self._pending:
            return
        lines, self._pending = self._pending, []
        try:
            fd = sys.stderr.fileno()  # looked up each time: whatever stderr is now
        except (AttributeError, OSError, ValueError):  # no real file behind stderr: let logging write
            for line in lines:
                log.info(line.decode())
            return
        data = memoryview(b"\n".join(lines) + b"\n")
        try:
            while data:
                data = data[os.write(fd, data) :]
        except OSError:  # stderr closed or full: like logging, drop the lines rather than fail requests
            pass


class UnparsedRequests(logging.Filter):
    """For aiohttp's server logger. A request its HTTP parser refuses (a header line over its limit, a
    control character in a header) is answered by aiohttp itself, and logged as an error with the
    parser's exception, whose text quotes the offending line: an Authorization header's key, say.
    Such a record keeps who sent it and the kind of error, never the text, at WARNING at most (the
    fault is the client's)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.msg = "refused a request aiohttp's parser could not read (%s), from %s"
            record.args = (type(exc).__name__, record.args[0] if isinstance(record.args, tuple) and record.args
                           else "?")  # fmt: skip
            record.exc_info = record.exc_text = None
            record.levelno = min(record.levelno, logging.WARNING)  # (aiohttp's DEBUG ones stay DEBUG)
            record.levelname = logging.getLevelName(record.levelno)
        return True
