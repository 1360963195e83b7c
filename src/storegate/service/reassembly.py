"""Rebuild the `chat.completion` a non-streamed call returns from a stream's chunks.

Deltas merge the way the openai SDK merges them: strings concatenate, objects merge, lists extend,
tool calls merge by their `index`. Identity keys (role, id, type) keep their first value.

A string that grows is kept as its parts and joined once, in `result`: concatenating on every
chunk copied the whole text each time, so a stream cost time quadratic in its length (measured:
100,000 four-character chunks took 879 ms on the event loop).
"""

from collections.abc import Iterator
from typing import Any

_FIRST_WINS = frozenset({"role", "id", "type", "index"})
_CHOICE_KEYS = frozenset({"index", "delta", "finish_reason", "logprobs"})  # what a chunk's choice merges into
_BUILT = frozenset({"index", "message", "logprobs", "finish_reason"})  # what a stored choice is built from


def chunk_choices(chunk: dict[str, Any]) -> Iterator[tuple[int, dict[str, Any]]]:
    """A chunk's choices that are objects, with their index (0 when a backend gives none usable)."""
    choices = chunk.get("choices")
    for choice in choices if isinstance(choices, list) else ():
        if isinstance(choice, dict):
            index = choice.get("index")
            yield (index if isinstance(index, int) else 0), choice


class Reassembly:
    def __init__(self) -> None:
        self.chunks = 0
        self._top: dict[str, Any] = {}
        self._usage: Any = None
        self._choices: dict[int, dict[str, Any]] = {}

    def add(self, chunk: dict[str, Any]) -> None:
        self.chunks += 1
        for key in ("model", "service_tier", "system_fingerprint"):
            if chunk.get(key) is not None:
                self._top[key] = chunk[key]
        if isinstance(chunk.get("usage"), dict):
            self._usage = chunk["usage"]
        for index, choice in chunk_choices(chunk):
            self._add_choice(index, choice)

    def _add_choice(self, index: int, choice: dict[str, Any]) -> None:
        state = self._choices.get(index)
        if state is None:
            state = self._choices[index] = {
                "message": {},
                "tool_calls": {},
                "logprobs": None,
                "finish_reason": None,
                "other": {},
            }
        delta = choice.get("delta")
        if isinstance(delta, dict):
            for call in delta.get("tool_calls") or ():
                if isinstance(call, dict):
                    position = call.get("index")
                    slot = state["tool_calls"].setdefault(
                        position if isinstance(position, int) else len(state["tool_calls"]), {}
                    )
                    merge(slot, {k: v for k, v in call.items() if k != "index"})
            # The delta itself when it has no tool calls: no copy per chunk (measured: add() 2.1 -> 1.3 us).
            merge(state["message"], delta if "tool_calls" not in delta else
                  {k: v for k, v in delta.items() if k != "tool_calls"})  # fmt: skip
        if choice.get("finish_reason") is not None:
            state["finish_reason"] = choice["finish_reason"]
        if len(choice) > len(_CHOICE_KEYS.intersection(choice)):
            # A backend's own choice fields (vLLM's stop_reason), as its non-streamed answer has them:
            # the last value given (lists joined in order), null only if none other came.
            other = state["other"]
            for key, value in choice.items():
                if key in _CHOICE_KEYS or (value is None and key in other):
                    continue
                if isinstance(value, list) and isinstance(other.get(key), list):
                    other[key] = other[key] + value  # per-chunk lists (vLLM's token_ids) add up
                else:
                    other[key] = value
        logprobs = choice.get("logprobs")
        if isinstance(logprobs, dict):
            if state["logprobs"] is None:
                state["logprobs"] = {"content": None, "refusal": None}
            merge(state["logprobs"], logprobs)

    def result(self, completion_id: str, created: int, incomplete_reason: str | None) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": self._top.get("model", ""),
            "choices": [self._choice(i, incomplete_reason is not None) for i in sorted(self._choices)],
        }
        if self._usage is not None:
            doc["usage"] = self._usage
        for key in ("service_tier", "system_fingerprint"):
            if key in self._top:
                doc[key] = self._top[key]
        if incomplete_reason is not None:
            doc["incomplete_details"] = {"reason": incomplete_reason}
        return doc

    def _choice(self, index: int, incomplete: bool) -> dict[str, Any]:
        state = _joined(self._choices[index])
        rest = dict(state["message"])
        message: dict[str, Any] = {
            "role": rest.pop("role", None) or "assistant",
            "content": rest.pop("content", None),
            "refusal": rest.pop("refusal", None),
        }
        calls = state["tool_calls"]
        if calls:
            message["tool_calls"] = [calls[i] for i in sorted(calls)]
        if message["content"] == "" and (calls or message["refusal"]):
            message["content"] = None
        message.update({k: v for k, v in rest.items() if v is not None})
        finish = state["finish_reason"]
        if finish is None:
            # The spec requires one of its reasons: a cut-short choice reads as truncated output.
            finish = "length" if incomplete else "stop"
        return {"index": index, "message": message, "logprobs": state["logprobs"], "finish_reason": finish,
                **{k: v for k, v in state["other"].items() if k not in _BUILT}}  # fmt: skip


class _Text(list[str]):
    """The parts of a string that is still growing; `_joined` makes it one string."""


def merge(acc: dict[str, Any], delta: dict[str, Any]) -> None:
    for key, value in delta.items():
        current = acc.get(key)
        if value is None:
            acc.setdefault(key, None)
        elif current is None:
            acc[key] = _copy(value)
        elif key in _FIRST_WINS:
            continue
        elif isinstance(current, _Text):
            if isinstance(value, str):
                current.append(value)
            else:
                acc[key] = _copy(value)
        elif isinstance(current, str) and isinstance(value, str):
            acc[key] = _Text((current, value))
        elif isinstance(current, dict) and isinstance(value, dict):
            merge(current, value)
        elif isinstance(current, list) and isinstance(value, list):
            current.extend(value)
        else:
            acc[key] = _copy(value)


def _joined(value: Any) -> Any:
    """A copy of merged state with every growing string joined."""
    if isinstance(value, _Text):
        return "".join(value)
    if isinstance(value, dict):
        return {k: _joined(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_joined(v) for v in value]
    return value


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value
