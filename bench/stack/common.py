"""Shared fixtures for the stack benchmark: fixed payloads and an aiohttp.web runner on uvloop.

Imported both by the orchestrator and by the server processes, so it imports aiohttp/uvloop lazily.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import orjson

if TYPE_CHECKING:
    from aiohttp import web

HOST = "127.0.0.1"

# ~300-byte fixed JSON body for the framework floor (scenario 1).
FRAMEWORK_BODY: bytes = orjson.dumps(
    {
        "object": "list",
        "data": [
            {"id": "gpt-4o-mini", "object": "model", "created": 1721172741, "owned_by": "system"},
            {"id": "gpt-4o", "object": "model", "created": 1715367049, "owned_by": "system"},
            {"id": "o3-mini", "object": "model", "created": 1737146383, "owned_by": "system"},
        ],
        "has_more": False,
        "first_id": "gpt-4o-mini",
        "last_id": "o3-mini",
    }
)

# ~600-byte chat.completion body returned by the fake upstream (scenario 2).
COMPLETION_BODY: bytes = orjson.dumps(
    {
        "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
        "object": "chat.completion",
        "created": 1741570283,
        "model": "gpt-4o-2024-08-06",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "A wooden boardwalk runs through a green meadow under a blue sky.",
                    "refusal": None,
                    "annotations": [],
                },
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": 1117,
            "completion_tokens": 46,
            "total_tokens": 1163,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
        },
        "service_tier": "default",
        "system_fingerprint": "fp_fc9f1d7035",
    }
)

# The POST body wrk sends to the proxy (scenario 2).
CHAT_REQUEST_BODY: bytes = orjson.dumps(
    {
        "model": "gpt-4o",
        "store": True,
        "metadata": {"bench": "stack"},
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is in this image? Describe it in one sentence."},
        ],
    }
)

SQLITE_BODY_BYTES = 1536  # ~1.5 KB blob per row (scenario 3)


def serve_aiohttp(make_app: Callable[[], Awaitable[web.Application]], port: int, backlog: int = 1024) -> None:
    """Run an aiohttp.web app on uvloop, bound to 127.0.0.1:port, until SIGTERM/SIGINT."""
    import signal

    import uvloop
    from aiohttp import web

    async def main() -> None:
        app = await make_app()
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, HOST, port, backlog=backlog)
        await site.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            await runner.cleanup()

    uvloop.run(main())
