"""Routing by model: an exact model name first, then a glob pattern, then a catch-all backend."""

from fnmatch import fnmatchcase

from storegate.backends.client import Backend
from storegate.errors import NotFound


class Router:
    def __init__(self, backends: list[Backend]) -> None:
        self.backends = backends

    def route(self, model: str) -> Backend:
        for backend in self.backends:
            if backend.config.models is not None and model in backend.config.models:
                return backend
        for backend in self.backends:
            models = backend.config.models
            if models is not None and any(fnmatchcase(model, pattern) for pattern in models):
                return backend
        for backend in self.backends:
            if backend.config.models is None:
                return backend
        raise NotFound(
            f"The model `{model}` does not exist or you do not have access to it.",
            param="model",
            code="model_not_found",
        )

    async def close(self) -> None:
        for backend in self.backends:
            await backend.close()
