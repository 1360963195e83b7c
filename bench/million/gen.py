"""Deterministic completions for the million benchmark: record i depends only on (SEED, i).

Each record is what storegate itself would store for a `store: true` call: the body comes from
storegate.service.records.stored_body (a chat.completion without metadata, ~1.5 KB), the messages
from message_items, the request is the raw JSON the client sent. Ids follow storegate's format
(`chatcmpl-` + 10 base62 time chars + 19 random chars) and increase with i, 2.592 s apart on average,
so 1M completions span 30 days.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any

import orjson

from storegate.ids import ALPHABET, PREFIX
from storegate.service.records import message_items, stored_body
from storegate.store import NewCompletion

SEED = 20260101
GEN_VERSION = 1  # bump when the records change: cached databases are then rebuilt
PROJECT = "default"  # storegate serve answers every request for this project
T0_US = 1_760_000_000 * 1_000_000
STEP_US = 2_592_000  # 1M completions over 30 days
USERS = 1000
ENVS = ("prod", "staging", "dev")
MODELS = (("gpt-4o-mini", "gpt-4o-mini-2024-07-18"), ("gpt-4.1", "gpt-4.1-2025-04-14"))
BATCH_SIZE = 1000

_rng = random.Random(SEED)
_WORDS = [
    "".join(_rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(_rng.randint(2, 9))) for _ in range(2000)
]
# 4096 sentences of 6-14 words: texts are slices of this pool chosen by the record's hash.
_SENTENCES = [
    " ".join(_rng.choice(_WORDS) for _ in range(_rng.randint(6, 14))).capitalize() + "." for _ in range(4096)
]


def _b62(value: int, width: int) -> str:
    chars = []
    for _ in range(width):
        value, rem = divmod(value, 62)
        chars.append(ALPHABET[rem])
    return "".join(reversed(chars))


def _digest(i: int) -> bytes:
    return hashlib.blake2b(f"{SEED}:{i}".encode(), digest_size=48).digest()


def _text(h: bytes, at: int, sentences: int) -> str:
    start = int.from_bytes(h[at : at + 2], "big") % (4096 - sentences)
    return " ".join(_SENTENCES[start : start + sentences])


def completion_id(i: int) -> str:
    return _id(i, _digest(i))


def _id(i: int, h: bytes) -> str:
    t_us = T0_US + i * STEP_US + int.from_bytes(h[40:44], "big") % (STEP_US // 2)
    return PREFIX + _b62(t_us, 10) + "".join(ALPHABET[b % 62] for b in h[12:31])


def user(n: int) -> str:
    return f"u{n}"


def attributes(i: int) -> dict[str, Any]:
    """The filterable attributes of record i, without building it (for choosing queries)."""
    h = _digest(i)
    return {
        "id": _id(i, h),
        "user": user(int.from_bytes(h[0:2], "big") % USERS),
        "env": ENVS[h[2] % 3],
        "batch": str(i // BATCH_SIZE),
        "model": MODELS[h[3] % 2][0],
    }


def record(i: int) -> NewCompletion:
    h = _digest(i)
    cid = _id(i, h)
    t_us = T0_US + i * STEP_US + int.from_bytes(h[40:44], "big") % (STEP_US // 2)
    created = t_us // 1_000_000
    model, reported = MODELS[h[3] % 2]
    metadata = {
        "user": user(int.from_bytes(h[0:2], "big") % USERS),
        "env": ENVS[h[2] % 3],
        "batch": str(i // BATCH_SIZE),
    }
    n_messages = 2 + h[4] % 3
    messages: list[dict[str, Any]] = [{"role": "system", "content": _text(h, 5, 2)}]
    for k in range(1, n_messages):
        role = "user" if k % 2 else "assistant"
        messages.append({"role": role, "content": _text(h, 5 + 2 * k, 2 + h[11] % 3)})
    request: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "store": True,
        "metadata": metadata,
        "temperature": 0.7,
    }
    answer = _text(h, 32, 8 + h[34] % 4)
    prompt_tokens = sum(len(m["content"]) for m in messages) // 4
    completion_tokens = len(answer) // 4
    response = {
        "id": cid,
        "object": "chat.completion",
        "created": created,
        "model": reported,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer, "refusal": None, "annotations": []},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        },
        "service_tier": "default",
        "system_fingerprint": "fp_" + h[35:40].hex(),
    }
    return NewCompletion(
        project=PROJECT,
        id=cid,
        created=created,
        model=model,
        response_model=reported,
        backend="default",
        backend_id="chatcmpl-up" + h[20:32].hex(),
        incomplete=False,
        metadata=metadata,
        body=stored_body(response, request, "req_" + h[24:40].hex()),
        request=orjson.dumps(request),
        messages=message_items(cid, messages),
    )
