"""What a stored completion looks like: the body the client received plus the echoed request
settings, the items of its messages list, and the small repairs that keep bodies within the spec.
"""

from typing import Any

import orjson

from storegate.ids import message_id

_ECHOED = ("tool_choice", "seed", "top_p", "temperature", "presence_penalty", "frequency_penalty", "tools",
           "response_format")  # fmt: skip
# Keys the spec types as non-null: a backend's explicit null is dropped so every body validates.
_TOP_NOT_NULL = ("system_fingerprint", "usage")
_MESSAGE_NOT_NULL = ("tool_calls", "function_call", "annotations")


def conform(doc: dict[str, Any]) -> None:
    """Drop the nulls the spec does not allow (vLLM and others send them); change nothing else."""
    for key in _TOP_NOT_NULL:
        if key in doc and doc[key] is None:
            del doc[key]
    for choice in doc.get("choices") or ():
        message = choice.get("message") if isinstance(choice, dict) else None
        if isinstance(message, dict):
            for key in _MESSAGE_NOT_NULL:
                if key in message and message[key] is None:
                    del message[key]


def stored_body(response: dict[str, Any], request: dict[str, Any], request_id: str) -> bytes:
    """The stored object without `metadata`, which is kept apart (it changes) and spliced in on read."""
    body = {k: v for k, v in response.items() if k != "metadata"}
    body["request_id"] = request_id
    for key in _ECHOED:
        body[key] = request.get(key)
    body["input_user"] = request.get("user")
    tier = response.get("service_tier")
    body["service_tier"] = tier if tier is not None else request.get("service_tier")
    return orjson.dumps(body)


def message_items(completion_id: str, messages: list[dict[str, Any]]) -> list[bytes]:
    return [orjson.dumps(_message_item(completion_id, i, m)) for i, m in enumerate(messages)]


def _message_item(completion_id: str, index: int, message: dict[str, Any]) -> dict[str, Any]:
    content = message.get("content")
    parts = None
    if isinstance(content, list):
        parts = [p for p in content if isinstance(p, dict) and p.get("type") in ("text", "image_url")]
        content = "\n".join(
            p["text"]
            for p in content
            if isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
        )
    elif content is not None and not isinstance(content, str):
        content = orjson.dumps(content).decode()
    item: dict[str, Any] = {
        "id": message_id(completion_id, index),
        "role": message.get("role"),
        "content": content,
        "refusal": None,
        "name": message.get("name"),
        "content_parts": parts,
    }
    for key in ("tool_calls", "tool_call_id", "function_call"):
        if message.get(key) is not None:
            item[key] = message[key]
    return item
