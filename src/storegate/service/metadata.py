"""Metadata rules, shared by create, update and the list filter: OpenAI's limits and error codes."""

from typing import Any

from storegate.errors import InvalidRequest

MAX_KEYS = 16
MAX_KEY_CHARS = 64
MAX_VALUE_CHARS = 512

_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "an integer",
               float: "a number", type(None): "null"}  # fmt: skip


def json_type(value: Any) -> str:
    return _JSON_TYPES.get(type(value), "a value")


def validate_metadata(value: Any) -> dict[str, str]:
    """The metadata as a plain dict; null is no metadata. Raises InvalidRequest on any violation."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidRequest(
            f"Invalid type for 'metadata': expected an object, but got {json_type(value)} instead.",
            param="metadata",
            code="invalid_type",
        )
    if len(value) > MAX_KEYS:
        raise InvalidRequest(
            f"Invalid 'metadata': too many properties. Expected an object with at most {MAX_KEYS} properties,"
            f" but got an object with {len(value)} properties instead.",
            param="metadata",
            code="object_above_max_properties",
        )
    for key, item in value.items():
        if not key:
            raise InvalidRequest(
                "Invalid 'metadata': empty key. Expected keys with minimum length 1.",
                param="metadata",
                code="string_below_min_length",
            )
        if len(key) > MAX_KEY_CHARS:
            raise InvalidRequest(
                f"Invalid 'metadata': string too long. Expected a string with maximum length {MAX_KEY_CHARS},"
                f" but got a string with length {len(key)} instead.",
                param="metadata",
                code="string_above_max_length",
            )
        if not isinstance(item, str):
            raise InvalidRequest(
                f"Invalid type for 'metadata.{key}': expected a string, but got {json_type(item)} instead.",
                param=f"metadata.{key}",
                code="invalid_type",
            )
        if len(item) > MAX_VALUE_CHARS:
            raise InvalidRequest(
                f"Invalid 'metadata.{key}': string too long. Expected a string with maximum length"
                f" {MAX_VALUE_CHARS}, but got a string with length {len(item)} instead.",
                param=f"metadata.{key}",
                code="string_above_max_length",
            )
    return dict(value)
