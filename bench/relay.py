"""A TCP byte relay on uvloop: the cost of one proxy hop with no HTTP, no JSON and no storage.

Run as `python relay.py PORT TARGET_PORT`. Each client connection gets its own connection to
127.0.0.1:TARGET_PORT, and bytes are passed on as they arrive, both ways, unparsed. It is the
floor any HTTP proxy pays on this machine for the extra hop (two more sockets, two more process
wake-ups per round trip): the streamed scenario runs it beside the direct baseline, so storegate's
time to first chunk can be read against what a hop costs before any work is done.
"""

from __future__ import annotations

import asyncio
import sys
from typing import cast

HOST = "127.0.0.1"


class _Half(asyncio.Protocol):
    """One side of a relayed connection: what it receives is written to its peer."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: _Half | None = None
        self.pending: list[bytes] = []  # received before the peer was connected

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.write(data)
        else:
            self.pending.append(data)

    def connection_lost(self, exc: Exception | None) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.close()

    # Flow control: while this side's socket cannot take more, stop reading from its peer.
    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()


class _Client(_Half):
    def __init__(self, target_port: int) -> None:
        super().__init__()
        self._target_port = target_port

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        assert self.transport is not None
        try:
            _, upstream = await asyncio.get_running_loop().create_connection(_Half, HOST, self._target_port)
        except OSError:
            self.transport.close()
            return
        upstream.peer, self.peer = self, upstream
        assert upstream.transport is not None
        for data in self.pending:
            upstream.transport.write(data)
        self.pending.clear()
        if self.transport.is_closing():
            upstream.transport.close()


async def main(port: int, target_port: int) -> None:
    server = await asyncio.get_running_loop().create_server(
        lambda: _Client(target_port), HOST, port, backlog=2048
    )
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    import uvloop

    uvloop.run(main(int(sys.argv[1]), int(sys.argv[2])))
