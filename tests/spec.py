"""Validate HTTP bodies and stream chunks against OpenAI's Chat Completions OpenAPI spec (tests only).

The spec lives beside the repo at ``../shared/spec/openai-chat-completions.yaml``; ``spec()`` loads it once.
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

__all__ = ["OPERATION_IDS", "SPEC_PATH", "SpecValidator", "parse_sse", "spec"]

SPEC_PATH = Path(__file__).resolve().parents[2] / "shared/spec/openai-chat-completions.yaml"
SPEC_URI = "https://storegate.invalid/spec/openai-chat-completions.yaml"
OPERATION_IDS = frozenset(
    {
        "listChatCompletions",
        "createChatCompletion",
        "getChatCompletion",
        "updateChatCompletion",
        "deleteChatCompletion",
        "getChatCompletionMessages",
    }
)
ERROR_KEYS = frozenset({"message", "type", "param", "code"})
# Roles a stored message may have (storegate contract, see _storegate_overrides).
MESSAGE_ROLES = ["developer", "system", "user", "assistant", "tool", "function"]
MESSAGES_OVERRIDE = "StoregateChatCompletionMessageList"
MAX_MESSAGE = 400


def _convert_nullable(node: Any) -> Any:
    """Rewrite the OpenAPI 3.0 idiom ``nullable: true`` into JSON Schema.

    The document says ``openapi: 3.1.0`` but some schemas (e.g. CreateChatCompletionStreamResponse's
    ``usage``, ``logprobs`` and ``finish_reason``) still use ``nullable: true``, which JSON Schema 2020-12
    ignores; left alone, ``"usage": null`` on a stream chunk would be rejected. Each such schema becomes
    ``anyOf: [<schema without nullable>, {type: null}]``. Only a boolean ``nullable`` is a keyword, so a
    property that happens to be named "nullable" (a dict) is left alone.
    """
    if isinstance(node, list):
        return [_convert_nullable(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {k: _convert_nullable(v) for k, v in node.items() if not (k == "nullable" and isinstance(v, bool))}
    if node.get("nullable") is True:
        return {"anyOf": [out, {"type": "null"}]}
    return out


def _pointer(*tokens: str) -> str:
    return "#" + "".join("/" + t.replace("~", "~0").replace("/", "~1") for t in tokens)


def _storegate_overrides(doc: dict[str, Any]) -> None:
    """storegate's binding contract overrides the spec in one place, added here as an extra component.

    In getChatCompletionMessages each item is ``allOf: [ChatCompletionResponseMessage, {id, content_parts}]``
    and ChatCompletionResponseMessage pins ``role`` to "assistant"; but stored messages carry their own
    role (user, system, developer, tool, ...), as OpenAI's own example shows. So for that operation only we
    validate against a deep copy of the list schema whose message part allows every message role.
    """
    schemas = doc["components"]["schemas"]
    message = copy.deepcopy(schemas["ChatCompletionResponseMessage"])
    role = message["properties"]["role"]
    assert role.get("enum") == ["assistant"], f"spec changed: ChatCompletionResponseMessage.role is {role}"
    role["enum"] = list(MESSAGE_ROLES)
    message_list = copy.deepcopy(schemas["ChatCompletionMessageList"])
    parts = message_list["properties"]["data"]["items"]["allOf"]
    target = {"$ref": "#/components/schemas/ChatCompletionResponseMessage"}
    assert parts[0] == target, f"spec changed: ChatCompletionMessageList items are {parts}"
    parts[0] = message
    schemas[MESSAGES_OVERRIDE] = message_list
    # The contract's second override: an empty page has first_id and last_id null (the spec says string).
    for name in ("ChatCompletionList", MESSAGES_OVERRIDE):
        _null_ids_on_empty_page(schemas[name])


def _null_ids_on_empty_page(schema: dict[str, Any]) -> None:
    for key in ("first_id", "last_id"):
        assert schema["properties"][key] == {
            "type": "string",
            "description": schema["properties"][key]["description"],
        }
        schema["properties"][key] = {"type": ["string", "null"]}
    schema["if"] = {"properties": {"data": {"maxItems": 0}}}
    schema["then"] = {"properties": {"first_id": {"type": "null"}, "last_id": {"type": "null"}}}
    schema["else"] = {"properties": {"first_id": {"type": "string"}, "last_id": {"type": "string"}}}


def _short(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE else text[:MAX_MESSAGE] + f"... ({len(text)} chars)"


def _describe(error: ValidationError) -> str:
    schema_path = "/".join(str(p) for p in error.absolute_schema_path)
    return f"at {error.json_path}: {_short(error.message)} [schema: {schema_path}]"


class SpecValidator:
    """Validators for the operations' 200 bodies, error envelopes and stream chunks."""

    def __init__(self, path: Path = SPEC_PATH) -> None:
        with path.open(encoding="utf-8") as fh:
            raw = yaml.load(fh, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        self.document: dict[str, Any] = _convert_nullable(raw)
        _storegate_overrides(self.document)
        resource = Resource.from_contents(self.document, default_specification=DRAFT202012)
        self.registry: Registry[Any] = Registry().with_resource(SPEC_URI, resource)
        self.operations: dict[str, str] = {}  # operationId -> pointer of its 200 JSON schema
        for path_name, item in self.document["paths"].items():
            for method, op in item.items():
                if isinstance(op, dict) and op.get("operationId") in OPERATION_IDS:
                    tokens = (path_name, method, "responses", "200", "content", "application/json", "schema")
                    self.operations[op["operationId"]] = _pointer("paths", *tokens)
        self.operations["getChatCompletionMessages"] = _pointer("components", "schemas", MESSAGES_OVERRIDE)
        missing = OPERATION_IDS - self.operations.keys()
        assert not missing, f"operations missing from {path}: {sorted(missing)}"
        self._validators: dict[str, Draft202012Validator] = {}

    def _validator(self, pointer: str) -> Draft202012Validator:
        if pointer not in self._validators:
            schema = {"$ref": SPEC_URI + pointer}
            self._validators[pointer] = Draft202012Validator(schema, registry=self.registry)
        return self._validators[pointer]

    def _check(self, pointer: str, instance: object, what: str) -> None:
        errors = list(self._validator(pointer).iter_errors(instance))
        if not errors:
            return
        best = best_match(errors)
        root = best
        while root.parent is not None:  # best_match may pick an error nested in an anyOf's context
            root = root.parent
        others = [f"  - {_describe(e)}" for e in errors if e is not root]
        lines = [f"{what} does not match {pointer}: {_describe(best)}"]
        if others:
            lines += [f"  ({len(errors)} top-level errors; the others:)", *others[:5]]
        raise AssertionError("\n".join(lines))

    def validate_component(self, name: str, instance: object) -> None:
        """Validate against ``#/components/schemas/<name>``."""
        if name not in self.document["components"]["schemas"]:
            raise KeyError(f"no schema {name!r} in the spec")
        self._check(_pointer("components", "schemas", name), instance, name)

    def validate_response(self, operation_id: str, status: int, body: object) -> None:
        """2xx: the operation's 200 schema; 4xx/5xx: ErrorResponse with all of message/type/param/code."""
        if operation_id not in self.operations:
            raise KeyError(f"unknown operationId {operation_id!r}; known: {sorted(self.operations)}")
        what = f"{operation_id} HTTP {status} body"
        if 200 <= status < 300:
            self._check(self.operations[operation_id], body, what)
        elif 400 <= status < 600:
            self._check(_pointer("components", "schemas", "ErrorResponse"), body, what)
            assert isinstance(body, dict) and isinstance(body.get("error"), dict)
            missing = ERROR_KEYS - body["error"].keys()
            assert not missing, f"{what}: error object lacks {sorted(missing)}: {_short(json.dumps(body))}"
        else:
            raise AssertionError(f"{what}: unexpected status {status}")

    def validate_chunk(self, chunk: object) -> None:
        """Validate one streamed ``chat.completion.chunk`` object."""
        self._check(_pointer("components", "schemas", "CreateChatCompletionStreamResponse"), chunk, "chunk")

    def validate_chunks(self, chunks: Iterable[object]) -> None:
        for i, chunk in enumerate(chunks):
            try:
                self.validate_chunk(chunk)
            except AssertionError as exc:
                raise AssertionError(f"chunk #{i}: {exc}") from None


def parse_sse(raw: str | bytes) -> tuple[list[Any], bool]:
    """Split an SSE body into its ``data:`` JSON payloads; the flag says whether it ended with ``[DONE]``.

    Raises ValueError on a data line that is not JSON or on events after ``[DONE]``.
    """
    text = raw.decode() if isinstance(raw, bytes) else raw
    payloads: list[Any] = []
    done = False
    for event in text.replace("\r\n", "\n").split("\n\n"):
        data = "\n".join(line[5:].removeprefix(" ") for line in event.split("\n") if line.startswith("data:"))
        if not data:
            continue
        if done:
            raise ValueError(f"event after [DONE]: {_short(data)}")
        if data == "[DONE]":
            done = True
            continue
        payloads.append(json.loads(data))
    return payloads, done


@functools.cache
def spec() -> SpecValidator:
    """The process-wide validator (loading and compiling the spec takes a moment)."""
    return SpecValidator()
