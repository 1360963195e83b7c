"""Tests for tests/spec.py: the OpenAI spec validator accepts good bodies and rejects bad ones."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.spec import parse_sse, spec


def completion() -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "gpt-x",
        "system_fingerprint": "fp_1",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "hi", "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


def chunk(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "gpt-x",
        "choices": [{"index": 0, "delta": {"content": "hi"}, "logprobs": None, "finish_reason": None}],
    }
    body.update(overrides)
    return body


def message_list(*messages: dict[str, Any]) -> dict[str, Any]:
    data = list(messages)
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"],
        "last_id": data[-1]["id"],
        "has_more": False,
    }


@pytest.mark.parametrize("op", ["createChatCompletion", "getChatCompletion", "updateChatCompletion"])
def test_accepts_good_completion(op: str) -> None:
    spec().validate_response(op, 200, completion())


def test_accepts_list_and_delete() -> None:
    body = {
        "object": "list",
        "data": [completion()],
        "first_id": "chatcmpl-1",
        "last_id": "chatcmpl-1",
        "has_more": False,
    }
    spec().validate_response("listChatCompletions", 200, body)
    deleted = {"object": "chat.completion.deleted", "id": "chatcmpl-1", "deleted": True}
    spec().validate_response("deleteChatCompletion", 200, deleted)


def test_rejects_missing_choices() -> None:
    body = completion()
    del body["choices"]
    with pytest.raises(AssertionError, match="'choices' is a required property"):
        spec().validate_response("getChatCompletion", 200, body)


def test_rejects_bad_finish_reason() -> None:
    body = completion()
    body["choices"][0]["finish_reason"] = "done"
    with pytest.raises(AssertionError, match=r"\$\.choices\[0\]\.finish_reason"):
        spec().validate_response("createChatCompletion", 200, body)


def test_rejects_message_without_refusal() -> None:
    body = completion()
    del body["choices"][0]["message"]["refusal"]
    with pytest.raises(AssertionError, match="'refusal' is a required property"):
        spec().validate_response("createChatCompletion", 200, body)


def test_rejects_null_system_fingerprint() -> None:
    body = completion()
    body["system_fingerprint"] = None
    with pytest.raises(AssertionError, match="system_fingerprint"):
        spec().validate_response("createChatCompletion", 200, body)


def test_error_envelope() -> None:
    good = {"error": {"message": "nope", "type": "invalid_request_error", "param": None, "code": None}}
    spec().validate_response("getChatCompletion", 404, good)
    spec().validate_response("createChatCompletion", 502, good)
    bad = copy.deepcopy(good)
    del bad["error"]["code"]
    with pytest.raises(AssertionError, match="'code' is a required property"):
        spec().validate_response("getChatCompletion", 404, bad)
    with pytest.raises(AssertionError):
        spec().validate_response("getChatCompletion", 404, {"detail": "Not Found"})


def test_unknown_operation_and_status() -> None:
    with pytest.raises(KeyError):
        spec().validate_response("createResponse", 200, {})
    with pytest.raises(AssertionError, match="unexpected status"):
        spec().validate_response("getChatCompletion", 302, {})


def test_chunk_nullable_fields() -> None:
    """``usage``, ``logprobs`` and ``finish_reason`` use OpenAPI 3.0 ``nullable: true`` in the spec."""
    spec().validate_chunk(chunk(usage=None))
    spec().validate_chunk(
        chunk(usage={"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}, choices=[])
    )
    spec().validate_chunk(chunk())
    with pytest.raises(AssertionError, match="usage"):
        spec().validate_chunk(chunk(usage="none"))


def test_chunk_rejects_bad_finish_reason() -> None:
    body = chunk()
    body["choices"][0]["finish_reason"] = "done"
    with pytest.raises(AssertionError, match="finish_reason"):
        spec().validate_chunk(body)
    with pytest.raises(AssertionError, match="chunk #1"):
        spec().validate_chunks([chunk(), body])


def test_messages_list_accepts_any_role() -> None:
    user = {"id": "chatcmpl-1-0", "role": "user", "content": "hello", "refusal": None, "content_parts": None}
    tool = {"id": "chatcmpl-1-1", "role": "tool", "content": "42", "refusal": None}
    spec().validate_response("getChatCompletionMessages", 200, message_list(user, tool))
    # the override is scoped to that operation: the spec's own component still pins the role
    with pytest.raises(AssertionError, match="'user' is not one of"):
        spec().validate_component("ChatCompletionMessageList", message_list(user))
    with pytest.raises(AssertionError, match="'robot' is not one of"):
        spec().validate_response("getChatCompletionMessages", 200, message_list({**user, "role": "robot"}))
    body = message_list(user)
    del body["data"][0]["id"]
    with pytest.raises(AssertionError, match="'id' is a required property"):
        spec().validate_response("getChatCompletionMessages", 200, body)


def test_parse_sse() -> None:
    raw = 'data: {"a": 1}\n\n: comment\n\ndata: {"b": 2}\r\n\r\ndata: [DONE]\n\n'
    assert parse_sse(raw) == ([{"a": 1}, {"b": 2}], True)
    assert parse_sse(b'data: {"a": 1}\n\n') == ([{"a": 1}], False)
    with pytest.raises(ValueError):
        parse_sse("data: {not json\n\n")
