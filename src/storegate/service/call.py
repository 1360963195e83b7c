"""One create request: validated, routed, and turned into what the backend receives.

storegate checks only what it relies on (an object with `model` and non-empty `messages`, and its own
`store`/`metadata`); every other field passes to the backend untouched.
"""

import contextlib
import json
import re
from dataclasses import dataclass
from typing import Any

import orjson

from storegate.backends import Backend, Router
from storegate.errors import InvalidRequest
from storegate.ids import IdMinter
from storegate.service.metadata import json_type, validate_metadata
from storegate.service.records import message_items, stored_body
from storegate.store import NewCompletion

_STORE_FIELDS = ("store", "metadata")


@dataclass(frozen=True, slots=True)
class Call:
    project: str
    request_id: str
    id: str
    created: int
    request: dict[str, Any]
    raw: bytes
    store: bool
    metadata: dict[str, str]
    stream: bool
    strip_usage: bool
    backend: Backend
    forward: bytes

    def record(self, response: dict[str, Any], backend_id: Any, incomplete: bool) -> NewCompletion:
        reported = response.get("model")
        return NewCompletion(
            project=self.project,
            id=self.id,
            created=self.created,
            model=self.request["model"],
            response_model=reported if isinstance(reported, str) else None,
            backend=self.backend.name,
            backend_id=backend_id if isinstance(backend_id, str) else None,
            incomplete=incomplete,
            metadata=self.metadata,
            body=stored_body(response, self.request, self.request_id),
            request=self.raw,
            messages=message_items(self.id, self.request["messages"]),
        )


_NOT_JSON = (
    "We could not parse the JSON body of your request. The API expects a JSON payload,"
    " but what was sent was not valid JSON."
)
# orjson reads integers from -2**63 to 2**64 - 1 exactly, and any other as the nearest float: a body
# it re-writes (store and metadata taken out, usage asked for) would change the number. Only a run of
# 19 digits can be one (2**63 has 19); only when such a run is out of range (it may be inside a
# string) does a second parse look at the body's numbers. The runs are looked for in C first (every
# digit made '0', everything else ' ': ~1 us for a 1.5 KB body, 0.8 ms a MB), since the regex alone
# took ~10-19 us for 1.5 KB and ~10 ms a MB.
_DIGITS_AS_ZEROS = bytes(48 if 48 <= c <= 57 else 32 for c in range(256))
_RUN = b"0" * 19
_LONG_DIGITS = re.compile(rb"-?[0-9]{19,}")
_INT_RANGE = range(-(2**63), 2**64)


def parse_object(raw: bytes) -> dict[str, Any]:
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidRequest(_NOT_JSON) from None
    if _RUN in raw.translate(_DIGITS_AS_ZEROS) and any(
        int(m) not in _INT_RANGE for m in _LONG_DIGITS.findall(raw)
    ):  # (a run may be inside a string: the parse tells)
        # (What orjson read, the standard library may not, in depth: orjson's verdict stands.)
        with contextlib.suppress(ValueError, RecursionError):
            json.loads(raw, parse_int=_exact_int)
    if not isinstance(doc, dict):
        raise InvalidRequest(
            f"Invalid type for the request body: expected an object, but got {json_type(doc)} instead.",
            code="invalid_type",
        )
    return doc


def _exact_int(text: str) -> int:
    value = int(text)
    if value not in _INT_RANGE:
        above = value > 0
        raise InvalidRequest(
            f"Invalid integer in the request body: {text} is {'above' if above else 'below'} the range"
            " storegate passes on exactly (-2^63 to 2^64 - 1).",
            code="integer_above_max_value" if above else "integer_below_min_value",
        )
    return value


def _expect(doc: dict[str, Any], key: str, kinds: tuple[type, ...], name: str) -> None:
    value = doc.get(key)
    if value is not None and not isinstance(value, kinds):
        raise InvalidRequest(
            f"Invalid type for '{key}': expected {name}, but got {json_type(value)} instead.",
            param=key,
            code="invalid_type",
        )


def _check_shape(doc: dict[str, Any]) -> None:
    for key in ("model", "messages"):
        if key not in doc:
            raise InvalidRequest(
                f"Missing required parameter: '{key}'.", param=key, code="missing_required_parameter"
            )
    model = doc["model"]
    if not isinstance(model, str):
        raise InvalidRequest(
            f"Invalid type for 'model': expected a string, but got {json_type(model)} instead.",
            param="model",
            code="invalid_type",
        )
    if not model:
        raise InvalidRequest(
            "Invalid 'model': empty string. Expected a string with minimum length 1,"
            " but got an empty string instead.",
            param="model",
            code="empty_string",
        )
    messages = doc["messages"]
    if not isinstance(messages, list):
        raise InvalidRequest(
            f"Invalid type for 'messages': expected an array, but got {json_type(messages)} instead.",
            param="messages",
            code="invalid_type",
        )
    if not messages:
        raise InvalidRequest(
            "Invalid 'messages': empty array. Expected an array with minimum length 1,"
            " but got an empty array instead.",
            param="messages",
            code="empty_array",
        )
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise InvalidRequest(
                f"Invalid type for 'messages[{i}]': expected an object, but got {json_type(message)} instead.",
                param=f"messages[{i}]",
                code="invalid_type",
            )
    _expect(doc, "store", (bool,), "a boolean")
    _expect(doc, "stream", (bool,), "a boolean")
    _expect(doc, "stream_options", (dict,), "an object")


def prepare(
    raw: bytes, *, project: str, request_id: str, router: Router, minter: IdMinter, store_default: bool
) -> Call:
    doc = parse_object(raw)
    _check_shape(doc)
    store = doc["store"] if isinstance(doc.get("store"), bool) else store_default
    metadata = validate_metadata(doc.get("metadata"))
    if doc.get("metadata") is not None and not store:
        raise InvalidRequest(
            "The 'metadata' parameter is only allowed when 'store' is enabled.", param="metadata"
        )
    backend = router.route(doc["model"])
    stream = doc.get("stream") is True
    options = doc.get("stream_options") or {}
    strip_usage = stream and store and options.get("include_usage") is not True
    forward = raw
    if strip_usage or (not backend.config.pass_store and any(k in doc for k in _STORE_FIELDS)):
        outgoing = dict(doc)
        if not backend.config.pass_store:
            for key in _STORE_FIELDS:
                outgoing.pop(key, None)
        if strip_usage:
            outgoing["stream_options"] = {**options, "include_usage": True}
        forward = orjson.dumps(outgoing)
    completion_id, created = minter.mint()
    return Call(project, request_id, completion_id, created, doc, raw, store, metadata, stream, strip_usage,
                backend, forward)  # fmt: skip
