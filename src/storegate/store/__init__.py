"""Storage: the Store protocol and its implementations. Never imports api/ or service/."""

from storegate.store.base import (
    ApiKey,
    ListQuery,
    MessagesQuery,
    NewCompletion,
    Page,
    RenderedPage,
    Row,
    Store,
)

__all__ = [
    "ApiKey",
    "ListQuery",
    "MessagesQuery",
    "NewCompletion",
    "Page",
    "RenderedPage",
    "Row",
    "Store",
]
