"""Property tests: metadata validation against its rules, and stream reassembly as the inverse of
splitting a completion into chunks, however the chunks fall."""

import itertools
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storegate.errors import InvalidRequest
from storegate.service.metadata import validate_metadata
from storegate.service.paging import list_object, page_body
from storegate.service.reassembly import Reassembly
from storegate.store import Page, Row
from storegate.store.base import rendered, spliced

values = st.one_of(
    st.text(max_size=600), st.integers(), st.none(), st.booleans(), st.lists(st.text(), max_size=2)
)
metadata = st.dictionaries(st.text(max_size=70), values, max_size=20)


@given(metadata)
def test_metadata_accepted_exactly_when_within_the_rules(doc: dict[str, Any]) -> None:
    valid = len(doc) <= 16 and all(
        1 <= len(k) <= 64 and isinstance(v, str) and len(v) <= 512 for k, v in doc.items()
    )
    if valid:
        assert validate_metadata(doc) == doc
        return
    with pytest.raises(InvalidRequest) as err:
        validate_metadata(doc)
    error = err.value
    assert error.status == 400 and error.param is not None and error.param.startswith("metadata")
    if len(doc) > 16:
        assert error.code == "object_above_max_properties" and error.param == "metadata"
    else:
        assert error.code in {"string_above_max_length", "string_below_min_length", "invalid_type"}


def _split(text: str, cuts: list[int]) -> list[str]:
    points = sorted({c % (len(text) + 1) for c in cuts} | {0, len(text)})
    return [text[a:b] for a, b in itertools.pairwise(points)]


@st.composite
def completions(draw: st.DrawFn) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """A completion and one way a backend might have streamed it."""
    n = draw(st.integers(1, 3))
    deltas: list[dict[str, Any]] = []
    choices = []
    for i in range(n):
        if draw(st.booleans()):
            name, args = draw(st.text(min_size=1, max_size=8)), draw(st.text(max_size=40))
            message = {"role": "assistant", "content": None, "refusal": None,
                       "tool_calls": [{"id": f"call_{i}", "type": "function",
                                       "function": {"name": name, "arguments": args}}]}  # fmt: skip
            first = {"role": "assistant", "content": None,
                     "tool_calls": [{"index": 0, "id": f"call_{i}", "type": "function",
                                     "function": {"name": name, "arguments": ""}}]}  # fmt: skip
            pieces = [{"tool_calls": [{"index": 0, "function": {"arguments": p}}]}
                      for p in _split(args, draw(st.lists(st.integers(0, 50), max_size=5)))]  # fmt: skip
            finish = "tool_calls"
        else:
            text = draw(st.text(max_size=60))
            message = {"role": "assistant", "content": text, "refusal": None}
            first = {"role": "assistant", "content": ""}
            pieces = [{"content": p} for p in _split(text, draw(st.lists(st.integers(0, 80), max_size=6)))]
            finish = draw(st.sampled_from(["stop", "length"]))
        choices.append({"index": i, "message": message, "logprobs": None, "finish_reason": finish})
        deltas += [{"index": i, "delta": d, "finish_reason": None} for d in [first, *pieces]]
        deltas.append({"index": i, "delta": {}, "finish_reason": finish})
    order = draw(st.permutations(range(len(deltas))))
    # Interleave choices freely, but keep each choice's own deltas in order.
    by_choice: dict[int, list[dict[str, Any]]] = {}
    for d in deltas:
        by_choice.setdefault(d["index"], []).append(d)
    stream = []
    for pick in order:
        index = deltas[pick]["index"]
        if by_choice[index]:
            stream.append(by_choice[index].pop(0))
    for rest in by_choice.values():
        stream += rest
    usage = {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}
    chunks = [{"id": "b", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [c]}
              for c in stream]  # fmt: skip
    chunks.append({"id": "b", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [],
                   "usage": usage})  # fmt: skip
    expected = {"id": "chatcmpl-x", "object": "chat.completion", "created": 7, "model": "m", "choices": choices,
                "usage": usage}  # fmt: skip
    return chunks, expected


@settings(max_examples=300)
@given(completions())
def test_reassembly_inverts_any_chunking(case: tuple[list[dict[str, Any]], dict[str, Any]]) -> None:
    chunks, expected = case
    assembly = Reassembly()
    for chunk in chunks:
        assembly.add(chunk)
    assert assembly.result("chatcmpl-x", 7, None) == expected


bodies = st.dictionaries(
    st.text(max_size=8).filter(lambda k: k != "metadata"), st.text(max_size=20), min_size=1, max_size=4
)


@given(st.lists(st.tuples(st.text(max_size=30), bodies, st.dictionaries(st.text(max_size=8), st.text(max_size=8))),
                max_size=6), st.booleans())  # fmt: skip
def test_a_page_of_completions_is_its_rendered_bodies_listed(
    items: list[tuple[str, dict[str, str], dict[str, str]]], has_more: bool
) -> None:
    """The page built in one join is byte for byte the list of each body rendered alone."""
    rows = [Row(cid, orjson.dumps(body), orjson.dumps(meta)) for cid, body, meta in items]
    page = list_object(rendered(Page(rows, has_more)))
    assert page == page_body([(r.id, spliced(r.body, r.metadata)) for r in rows], has_more)
    doc = orjson.loads(page)
    assert [d["metadata"] for d in doc["data"]] == [meta for _, _, meta in items]
    assert doc["has_more"] is has_more and doc["first_id"] == (items[0][0] if items else None)
