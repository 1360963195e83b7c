"""Build storegate's /openapi.json from OpenAI's spec (../shared/spec) plus our documented extensions.

Run `scripts/gen-openapi` after the shared spec changes; tests/unit/test_openapi.py fails while the
committed src/storegate/api/openapi.json differs from what this produces.
"""

import copy
import json
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT.parent / "shared" / "spec" / "openai-chat-completions.yaml"
OUT = ROOT / "src" / "storegate" / "api" / "openapi.json"
ERROR = {"description": "An error, in OpenAI's envelope.",
         "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}}  # fmt: skip
ROLES = ["developer", "system", "user", "assistant", "tool", "function"]


def _nullable(node: Any) -> Any:
    """`nullable: true` is OpenAPI 3.0; in this 3.1 document it becomes anyOf [schema, null]."""
    if isinstance(node, list):
        return [_nullable(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _nullable(v) for k, v in node.items() if not (k == "nullable" and isinstance(v, bool))}
    return {"anyOf": [out, {"type": "null"}]} if node.get("nullable") is True else out


def _bound(name: str, what: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": {"type": "integer"},
            "description": f"storegate extension: only completions created {what} (Unix seconds)."}  # fmt: skip


def _status(description: str) -> dict[str, Any]:
    schema = {"type": "object", "properties": {"status": {"type": "string"}}, "required": ["status"]}
    return {"get": {"operationId": description.split()[0], "summary": description, "security": [],
                    "responses": {"200": {"description": description,
                                          "content": {"application/json": {"schema": schema}}},
                                  "503": ERROR}}}  # fmt: skip


def _discriminators(node: Any, schemas: dict[str, Any]) -> None:
    """OpenAI's discriminators name no mapping, so by OpenAPI's rules their values would be schema
    names ("ChatCompletionMessageToolCall") while the wire says "function": map each value to the
    schema whose `type` enum holds it, as the API really answers."""
    if isinstance(node, list):
        for item in node:
            _discriminators(item, schemas)
        return
    if not isinstance(node, dict):
        return
    disc = node.get("discriminator")
    if isinstance(disc, dict) and "mapping" not in disc and "oneOf" in node:
        mapping = {}
        for option in node["oneOf"]:
            ref = option.get("$ref", "")
            target = schemas.get(ref.rsplit("/", 1)[-1], {})
            values = target.get("properties", {}).get(disc["propertyName"], {}).get("enum", [])
            if len(values) == 1:
                mapping[values[0]] = ref
        if len(mapping) == len(node["oneOf"]):
            disc["mapping"] = mapping
    for value in node.values():
        _discriminators(value, schemas)


def build(doc: dict[str, Any]) -> dict[str, Any]:
    doc = _nullable(copy.deepcopy(doc))
    _discriminators(doc, doc["components"]["schemas"])
    doc["info"]["title"] = "storegate"
    doc["info"]["x-storegate"] = "OpenAI's chat-completion paths with storegate's contract and extensions"
    doc["servers"] = [{"url": "/"}]
    doc["security"] = [{"ApiKeyAuth": []}]
    doc["paths"] = {"/v1" + path: item for path, item in doc["paths"].items()}
    for item in doc["paths"].values():
        for op in item.values():
            op["responses"].update({"4XX": ERROR, "5XX": ERROR})
    doc["paths"]["/v1/chat/completions"]["get"]["parameters"] += [
        _bound("created_after", "after this second"), _bound("created_before", "before this second")
    ]  # fmt: skip
    schemas = doc["components"]["schemas"]
    # The contract: an empty page has null cursors; a stored message keeps its own role.
    for name in ("ChatCompletionList", "ChatCompletionMessageList"):
        for key in ("first_id", "last_id"):
            schemas[name]["properties"][key] = {"anyOf": [{"type": "string"}, {"type": "null"}]}
    message = copy.deepcopy(schemas["ChatCompletionResponseMessage"])
    message["properties"]["role"]["enum"] = ROLES
    schemas["StoredChatCompletionMessage"] = message
    schemas["ChatCompletionMessageList"]["properties"]["data"]["items"]["allOf"][0] = {
        "$ref": "#/components/schemas/StoredChatCompletionMessage"
    }
    doc["paths"]["/v1/models"] = {"get": {"operationId": "listModels", "summary": "The backends' models.",
                                          "responses": {"200": {"description": "A model list",
                                                                "content": {"application/json": {"schema": {
                                                                    "type": "object"}}}},
                                                        "4XX": ERROR, "5XX": ERROR}}}  # fmt: skip
    doc["paths"]["/healthz"] = _status("healthz: the process serves")
    doc["paths"]["/readyz"] = _status("readyz: the store answers")
    return doc


def render() -> str:
    return json.dumps(build(yaml.safe_load(SPEC.read_text())), indent=1, sort_keys=False) + "\n"


if __name__ == "__main__":
    OUT.write_text(render())
    sys.stdout.write(f"wrote {OUT.relative_to(ROOT)}\n")
