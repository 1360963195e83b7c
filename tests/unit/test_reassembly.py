"""Stream reassembly: deltas merge the way the SDK merges them, tool calls by index."""

from storegate.service.reassembly import Reassembly


def _chunk(choices: list[dict[str, object]], **top: object) -> dict[str, object]:
    return {
        "id": "x",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": choices,
        **top,
    }


def test_tool_calls_merge_by_index_and_keep_first_identity() -> None:
    r = Reassembly()
    r.add(_chunk([{"index": 0, "delta": {"role": "assistant", "content": None, "tool_calls": [
        {"index": 0, "id": "call_a", "type": "function", "function": {"name": "f", "arguments": ""}},
        {"index": 1, "id": "call_b", "type": "function", "function": {"name": "g", "arguments": "{"}},
    ]}}]))  # fmt: skip
    r.add(_chunk([{"index": 0, "delta": {"tool_calls": [{"index": 1, "function": {"arguments": "}"}}]}}]))
    r.add(
        _chunk(
            [
                {
                    "index": 0,
                    "delta": {"tool_calls": [{"index": 0, "id": "call_a", "function": {"arguments": "[]"}}]},
                }
            ]
        )
    )
    r.add(_chunk([{"index": 0, "delta": {}, "finish_reason": "tool_calls"}], usage={"prompt_tokens": 1}))
    doc = r.result("chatcmpl-1", 5, None)
    message = doc["choices"][0]["message"]
    assert message["content"] is None and message["refusal"] is None
    assert message["tool_calls"] == [
        {"id": "call_a", "type": "function", "function": {"name": "f", "arguments": "[]"}},
        {"id": "call_b", "type": "function", "function": {"name": "g", "arguments": "{}"}},
    ]
    assert doc["choices"][0]["finish_reason"] == "tool_calls" and doc["usage"] == {"prompt_tokens": 1}


def test_incomplete_choices_read_as_truncated_and_are_marked() -> None:
    r = Reassembly()
    r.add(_chunk([{"index": 1, "delta": {"role": "assistant", "content": "b"}}]))
    r.add(_chunk([{"index": 0, "delta": {"role": "assistant", "content": "a"}}]))
    r.add(_chunk([{"index": 0, "delta": {"content": "a"}, "finish_reason": "stop"}]))
    doc = r.result("chatcmpl-1", 5, "client_disconnected")
    assert [c["index"] for c in doc["choices"]] == [0, 1]
    assert [c["finish_reason"] for c in doc["choices"]] == ["stop", "length"]
    assert doc["choices"][0]["message"]["content"] == "aa"
    assert doc["incomplete_details"] == {"reason": "client_disconnected"}


def test_logprobs_and_extra_string_fields_accumulate() -> None:
    r = Reassembly()
    lp = {"token": "a", "logprob": -1.0, "bytes": [97], "top_logprobs": []}
    r.add(_chunk([{"index": 0, "delta": {"role": "assistant", "reasoning_content": "hm"},
                   "logprobs": {"content": [lp], "refusal": None}}]))  # fmt: skip
    r.add(_chunk([{"index": 0, "delta": {"reasoning_content": "m", "content": "a"},
                   "logprobs": {"content": [lp], "refusal": None}, "finish_reason": "stop"}]))  # fmt: skip
    choice = r.result("chatcmpl-1", 5, None)["choices"][0]
    assert choice["message"]["reasoning_content"] == "hmm"
    assert choice["logprobs"] == {"content": [lp, lp], "refusal": None}


def test_a_long_stream_joins_its_parts_once_and_result_can_be_asked_twice() -> None:
    r = Reassembly()
    r.add(_chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}}]))
    for i in range(5000):
        r.add(_chunk([{"index": 0, "delta": {"content": f"{i},"}}]))
    r.add(
        _chunk(
            [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "c", "function": {"arguments": "{"}}]}}]
        )
    )
    r.add(_chunk([{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "}"}}]}}]))
    first = r.result("chatcmpl-1", 5, None)
    message = first["choices"][0]["message"]
    assert message["content"] == "".join(f"{i}," for i in range(5000))
    assert message["tool_calls"] == [{"id": "c", "function": {"arguments": "{}"}}]
    assert r.result("chatcmpl-1", 5, None) == first


def test_a_string_followed_by_a_value_of_another_type_is_replaced_as_before() -> None:
    r = Reassembly()
    r.add(_chunk([{"index": 0, "delta": {"role": "assistant", "audio": "a"}}]))
    r.add(_chunk([{"index": 0, "delta": {"audio": "b"}}]))
    r.add(_chunk([{"index": 0, "delta": {"audio": {"id": "x"}}}]))
    assert r.result("chatcmpl-1", 5, None)["choices"][0]["message"]["audio"] == {"id": "x"}


def test_a_backends_own_choice_fields_are_kept_as_its_non_streamed_answer_has_them() -> None:
    r = Reassembly()  # vLLM: stop_reason null on every chunk, the stop string on the last
    r.add(_chunk([{"index": 0, "delta": {"role": "assistant", "content": "a"}, "stop_reason": None}]))
    r.add(_chunk([{"index": 1, "delta": {"role": "assistant", "content": "b"}, "stop_reason": None}]))
    r.add(_chunk([{"index": 0, "delta": {}, "finish_reason": "stop", "stop_reason": "###"}]))
    r.add(
        _chunk([{"index": 0, "delta": {}, "stop_reason": None, "message": "not ours", "finish_reason": None}])
    )
    first, second = r.result("chatcmpl-1", 5, None)["choices"]
    assert first["stop_reason"] == "###" and second["stop_reason"] is None
    assert first["message"] == {"role": "assistant", "content": "a", "refusal": None}, (
        "built fields stay ours"
    )
    assert set(first) == {"index", "message", "logprobs", "finish_reason", "stop_reason"}


def test_a_choice_field_given_as_a_list_per_chunk_adds_up_and_odd_choices_are_skipped() -> None:
    r = Reassembly()  # vLLM's token_ids: each chunk's own tokens
    r.add(_chunk([{"index": 0, "delta": {"role": "assistant", "content": "a"}, "token_ids": [1]}]))
    r.add(_chunk(5))  # type: ignore[arg-type]  # a backend's malformed choices: nothing to merge
    r.add(_chunk([{"index": 0, "delta": {"content": "bc"}, "token_ids": [2, 3]}]))
    r.add(_chunk([{"index": 0, "delta": {}, "finish_reason": "stop", "token_ids": []}]))
    assert r.result("chatcmpl-1", 5, None)["choices"][0]["token_ids"] == [1, 2, 3]
