"""Talking to model servers: routing by model, the pooled HTTP client, error mapping."""

from storegate.backends.client import Backend, Upstream
from storegate.backends.router import Router
from storegate.backends.stream import Response

__all__ = ["Backend", "Response", "Router", "Upstream"]
