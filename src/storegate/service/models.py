"""GET /v1/models: the models the configured backends serve, as one OpenAI model list."""

import asyncio
from typing import Any

import orjson

from storegate.backends import Backend, Router


async def list_models(router: Router, client_key: str | None = None) -> bytes:
    results = await asyncio.gather(*(_models(b, client_key) for b in router.backends), return_exceptions=True)
    seen: dict[str, dict[str, Any]] = {}
    failures: list[BaseException] = []
    for result in results:
        if isinstance(result, BaseException):
            failures.append(result)
            continue
        for model in result:
            seen.setdefault(model["id"], model)
    if failures and not seen:
        failure = failures[0]
        raise failure
    return orjson.dumps({"object": "list", "data": list(seen.values())})


async def _models(backend: Backend, client_key: str | None) -> list[dict[str, Any]]:
    names = backend.config.models
    if names is None:
        return await backend.models(client_key)
    return [
        {"id": name, "object": "model", "created": 0, "owned_by": backend.name}
        for name in names
        if not any(c in name for c in "*?[")
    ]
