"""storegate: OpenAI's stored chat completions in front of any OpenAI-compatible backend."""

__version__ = "0.1.0"
