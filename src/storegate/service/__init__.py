"""The domain: create (forward + store), stored completions, models. No HTTP, no SQL."""

from storegate.service.chat import Chat
from storegate.service.models import list_models
from storegate.service.stored import StoredCompletions
from storegate.service.streaming import ChatStream

__all__ = ["Chat", "ChatStream", "StoredCompletions", "list_models"]
