"""Fake OpenAI-compatible model backend: a real aiohttp HTTP server process for storegate's tests.

Run ``python -m tests.fakes.backend --host 127.0.0.1 --port 0`` from the repo root; once bound it prints
``LISTENING http://HOST:PORT/v1``. Output is deterministic; ``model`` suffixes like ``+slow`` steer faults.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import re
import signal
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

CREATED = 1700000000  # deliberately old: a skewed backend clock
FINGERPRINT = "fp_fake"
REFUSAL_TEXT = "I can't help with that."
BIG_SIZE = 2_000_000
HUGE_SIZE = 12_000_000  # more than a loopback socket's send and receive buffers hold (4 MB + 6 MB)
BIG_PIECE = 64 * 1024
SLOW_DELAY = 0.02
LONG_SLEEP = 30.0
LOGPROB = -0.5
ARG_PIECE = 5
_CORE_FIELDS = ("model", "messages", "stream", "stream_options", "tools", "tool_choice", "user")
_SAMPLING_FIELDS = ("n", "temperature", "top_p", "seed", "stop", "presence_penalty", "frequency_penalty")
_OUTPUT_FIELDS = ("max_tokens", "max_completion_tokens", "logprobs", "top_logprobs", "response_format")
_OTHER_FIELDS = ("parallel_tool_calls", "service_tier", "logit_bias")
ALLOWED_FIELDS = frozenset(_CORE_FIELDS + _SAMPLING_FIELDS + _OUTPUT_FIELDS + _OTHER_FIELDS)

Json = dict[str, Any]


@dataclass
class State:
    models: list[str]
    strict: bool
    require_key: str | None
    requests: list[Json] = field(default_factory=list)
    counter: Iterator[int] = field(default_factory=lambda: itertools.count(1))


STATE = web.AppKey("state", State)


@dataclass
class Choice:
    index: int
    kind: str  # "content" | "refusal" | "tool"
    tokens: list[str]  # content or refusal tokens (after max_tokens truncation); empty for tool calls
    finish_reason: str
    completion_tokens: int
    tool_name: str = ""
    arguments: str = ""


@dataclass
class Plan:
    id: str
    model: str
    directives: frozenset[str]
    choices: list[Choice]
    usage: Json
    logprobs: bool
    top_logprobs: int
    service_tier: bool
    include_usage: bool


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> Json:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


_E500 = error_body("The server had an error while processing your request.", "server_error")
_E400 = error_body("fake backend rejects this", "invalid_request_error", "messages", "fake_bad")
_E429 = error_body("Rate limit reached for fake-model.", "requests", None, "rate_limit_exceeded")
# directive -> (status, body, headers) of an immediate answer
FAULTS: dict[str, tuple[int, bytes, dict[str, str]]] = {
    "fault-500": (500, orjson.dumps(_E500), {}),
    "fault-400": (400, orjson.dumps(_E400), {}),
    "fault-429": (429, orjson.dumps(_E429), {"Retry-After": "7"}),
    "fault-plain-404": (404, b'{"detail": "Not Found"}', {}),
    "fault-garbage": (200, b"this is not json", {}),
}


def json_response(obj: object, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    # stdlib json: request bodies may hold integers wider than orjson's 64 bits
    return web.Response(text=json.dumps(obj), status=status, headers=headers, content_type="application/json")


def error(
    status: int, msg: str, kind: str, param: str | None = None, code: str | None = None
) -> web.Response:
    return json_response(error_body(msg, kind, param, code), status=status)


def content_text(content: object) -> str:
    """String content as is; for a parts array, the ``text`` parts joined with a newline."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def tokenize(text: str) -> list[str]:
    """Words with their trailing whitespace, so that ``"".join(tokenize(t)) == t`` (for non-blank t)."""
    tokens: list[str] = re.findall(r"\S+\s*", text)
    lead = text[: len(text) - len(text.lstrip())]
    if tokens and lead:
        tokens[0] = lead + tokens[0]
    return tokens


def nonneg_int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def build_plan(body: Json, state: State) -> Plan:
    name, *directives = str(body.get("model") or "").split("+")
    raw_messages = body.get("messages")
    messages = [m for m in raw_messages if isinstance(m, dict)] if isinstance(raw_messages, list) else []
    prompt_tokens = sum(len(content_text(m.get("content")).split()) for m in messages)
    last_user = next(
        (content_text(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), ""
    )
    base = "echo: " + last_user
    n = nonneg_int(body.get("n")) or 1
    caps = (nonneg_int(body.get("max_tokens")), nonneg_int(body.get("max_completion_tokens")))
    limit = min((x for x in caps if x is not None), default=None)
    tools = body.get("tools")
    use_tools = isinstance(tools, list) and bool(tools) and body.get("tool_choice") != "none"
    choices: list[Choice] = []
    for i in range(n):
        text = base + (f" [{i}]" if n > 1 else "")
        if "refuse" in directives:
            tokens = tokenize(REFUSAL_TEXT)
            choices.append(Choice(i, "refusal", tokens, "stop", len(tokens)))
        elif use_tools:
            assert isinstance(tools, list)
            first = tools[0] if isinstance(tools[0], dict) else {}
            fn = first.get("function")
            tool_name = str(fn.get("name", "tool")) if isinstance(fn, dict) else "tool"
            # completion tokens of a tool call: the words of the text it carries
            args = json.dumps({"q": text})
            choices.append(Choice(i, "tool", [], "tool_calls", len(tokenize(text)), tool_name, args))
        else:
            tokens = tokenize(text)
            if "big" in directives or "huge" in directives:
                size = HUGE_SIZE if "huge" in directives else BIG_SIZE
                tokens += ["x" * BIG_PIECE] * (size // BIG_PIECE)
                if size % BIG_PIECE:
                    tokens.append("x" * (size % BIG_PIECE))
            finish = "stop"
            if limit is not None and limit < len(tokens):
                tokens, finish = tokens[:limit], "length"
            choices.append(Choice(i, "content", tokens, finish, len(tokens)))
    done = sum(c.completion_tokens for c in choices)
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": done, "total_tokens": prompt_tokens + done}
    options = body.get("stream_options")
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    top = nonneg_int(body.get("top_logprobs")) or 0
    plan_id, tier = f"chatcmpl-fake{next(state.counter)}", body.get("service_tier") is not None
    logprobs = body.get("logprobs") is True
    return Plan(
        plan_id, name + "-2024", frozenset(directives), choices, usage, logprobs, top, tier, include_usage
    )


def token_logprob(token: str, logprob: float = LOGPROB) -> Json:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode())}


def logprob_entries(tokens: Sequence[str], top: int) -> list[Json]:
    alts = [token_logprob(f"alt{j}", LOGPROB - j) for j in range(1, top)]
    return [token_logprob(t) | {"top_logprobs": [token_logprob(t), *alts][:top]} for t in tokens]


def choice_logprobs(plan: Plan, kind: str, tokens: Sequence[str]) -> Json | None:
    if not plan.logprobs:
        return None
    entries = logprob_entries(tokens, plan.top_logprobs)
    if kind == "refusal":
        return {"content": None, "refusal": entries}
    return {"content": entries if kind == "content" else None, "refusal": None}


def tool_call(c: Choice) -> Json:
    function = {"name": c.tool_name, "arguments": c.arguments}
    return {"id": f"call_{c.index}_0", "type": "function", "function": function}


def completion(plan: Plan) -> Json:
    choices: list[Json] = []
    for c in plan.choices:
        message: Json = {"role": "assistant", "content": "".join(c.tokens), "refusal": None}
        if c.kind == "refusal":
            message = {"role": "assistant", "content": None, "refusal": "".join(c.tokens)}
        elif c.kind == "tool":
            message = {"role": "assistant", "content": None, "refusal": None, "tool_calls": [tool_call(c)]}
        lp = choice_logprobs(plan, c.kind, c.tokens)
        choices.append(
            {"index": c.index, "message": message, "logprobs": lp, "finish_reason": c.finish_reason}
        )
    return envelope(plan, "chat.completion", choices) | {"usage": plan.usage}


def envelope(plan: Plan, object_: str, choices: list[Json]) -> Json:
    body: Json = {"id": plan.id, "object": object_, "created": CREATED, "model": plan.model}
    body |= {"system_fingerprint": FINGERPRINT, "choices": choices}
    if plan.service_tier:
        body["service_tier"] = "default"
    return body


def chunk(plan: Plan, choices: list[Json], usage: Json | None = None) -> Json:
    body = envelope(plan, "chat.completion.chunk", choices)
    if plan.include_usage:
        body["usage"] = usage
    return body


def entry(index: int, delta: Json, logprobs: Json | None = None, finish: str | None = None) -> Json:
    return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}


def stream_events(plan: Plan) -> tuple[list[Json], list[Json], list[Json]]:
    """(role chunks, interleaved body chunks, final chunks incl. the usage chunk)."""
    heads: list[Json] = []
    bodies: list[list[Json]] = []
    for c in plan.choices:
        if c.kind == "tool":
            call = {"index": 0, **tool_call(c), "function": {"name": c.tool_name, "arguments": ""}}
            role: Json = {"role": "assistant", "content": None, "tool_calls": [call]}
            heads.append(chunk(plan, [entry(c.index, role)]))
            pieces = [c.arguments[k : k + ARG_PIECE] for k in range(0, len(c.arguments), ARG_PIECE)]
            deltas = [{"tool_calls": [{"index": 0, "function": {"arguments": p}}]} for p in pieces]
            bodies.append([chunk(plan, [entry(c.index, d)]) for d in deltas])
            continue
        key = "refusal" if c.kind == "refusal" else "content"
        first: Json = {"role": "assistant", "content": ""}
        if key == "refusal":
            first = {"role": "assistant", "content": None, "refusal": ""}
        heads.append(chunk(plan, [entry(c.index, first)]))
        bodies.append(
            [chunk(plan, [entry(c.index, {key: t}, choice_logprobs(plan, c.kind, [t]))]) for t in c.tokens]
        )
    interleaved = [b[k] for k in range(max(map(len, bodies), default=0)) for b in bodies if k < len(b)]
    tails = [chunk(plan, [entry(c.index, {}, None, c.finish_reason)]) for c in plan.choices]
    if plan.include_usage:
        tails.append(chunk(plan, [], plan.usage))
    return heads, interleaved, tails


def sse(obj: object) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def abort(request: web.Request) -> None:
    if request.transport is not None:
        request.transport.abort()


async def stream(request: web.Request, plan: Plan) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await resp.prepare(request)
    heads, bodies, tails = stream_events(plan)
    d = plan.directives
    slow = "slow" in d

    async def send(payloads: Sequence[bytes]) -> None:
        for payload in payloads:
            if slow:
                await asyncio.sleep(SLOW_DELAY)
            await resp.write(payload)

    try:
        if "fault-cut" in d:
            await send([sse(e) for e in heads + bodies[:3]])
            abort(request)
            return resp
        if d & {"fault-stall", "fault-malformed-sse", "fault-error-event"}:
            await send([sse(e) for e in heads + bodies[:2]])
            heads, bodies = [], bodies[2:]
            if "fault-error-event" in d:
                await send([sse(error_body("backend exploded", "server_error"))])
                await resp.write_eof()
                return resp
            if "fault-malformed-sse" in d:
                await send([b"data: {not json\n\n"])
            if "fault-stall" in d:
                await asyncio.sleep(LONG_SLEEP)
        if "fault-early-end" in d:  # a clean end of the HTTP message, with no choice finished
            await send([sse(e) for e in heads + bodies[:2]])
            await resp.write_eof()
            return resp
        done = [] if "no-done" in d else [b"data: [DONE]\n\n"]  # some servers never send [DONE]
        await send([sse(e) for e in heads + bodies + tails] + done)
        await resp.write_eof()
    except ConnectionError:
        pass  # the client went away; nothing left to do
    return resp


def unauthorized(request: web.Request) -> web.Response | None:
    key = request.app[STATE].require_key
    if key is None or request.headers.get("Authorization") == f"Bearer {key}":
        return None
    return error(401, "Incorrect API key provided.", "invalid_request_error", None, "invalid_api_key")


async def chat_completions(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    raw = await request.read()
    try:
        body: object = json.loads(raw)
    except ValueError:
        body = None
    authorization = request.headers.get("Authorization")
    state.requests.append({"body": body, "authorization": authorization})
    if denied := unauthorized(request):
        return denied
    if not isinstance(body, dict):
        return error(400, "We could not parse the JSON body of your request.", "invalid_request_error")
    if state.strict:
        for key in body:
            if key not in ALLOWED_FIELDS:
                msg = f"Unrecognized request argument supplied: {key}"
                return error(400, msg, "invalid_request_error", key, "unknown_field")
    plan = build_plan(body, state)
    d = plan.directives
    if "fault-timeout" in d:
        await asyncio.sleep(LONG_SLEEP)
    for directive, (status, payload, headers) in FAULTS.items():
        if directive in d:
            return web.Response(body=payload, status=status, headers=headers, content_type="application/json")
    if body.get("stream") is True:
        return await stream(request, plan)
    if "fault-cut" in d:
        abort(request)
        return web.Response()  # writing it fails quietly: aiohttp ignores ConnectionError here
    if "slow" in d:
        await asyncio.sleep(SLOW_DELAY)
    if "fault-stall" in d:  # not specified for non-streamed requests: behave like fault-timeout
        await asyncio.sleep(LONG_SLEEP)
    return web.Response(body=orjson.dumps(completion(plan)), content_type="application/json")


async def list_models(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if denied := unauthorized(request):  # also enforced here, like OpenAI does
        return denied
    data = [{"id": m, "object": "model", "created": CREATED, "owned_by": "fake"} for m in state.models]
    return json_response({"object": "list", "data": data})


async def fake_requests(request: web.Request) -> web.Response:
    """GET: the recorded chat requests; DELETE: forget them."""
    recorded = request.app[STATE].requests
    if request.method == "GET":
        return json_response(recorded)
    count = len(recorded)
    recorded.clear()
    return json_response({"deleted": count})


def make_app(
    *, strict: bool = False, require_key: str | None = None, models: Sequence[str] = ("fake-model",)
) -> web.Application:
    app = web.Application(client_max_size=256 * 1024 * 1024)
    app[STATE] = State(models=list(models), strict=strict, require_key=require_key)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/_fake/requests", fake_requests)
    app.router.add_delete("/_fake/requests", fake_requests)
    return app


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.fakes.backend", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--strict", action="store_true", help="reject request fields outside the allowlist")
    parser.add_argument("--require-key", default=None, help="require 'Authorization: Bearer KEY'")
    parser.add_argument("--models", default="fake-model", help="comma-separated ids for GET /v1/models")
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    models = [m for m in args.models.split(",") if m]
    app = make_app(strict=args.strict, require_key=args.require_key, models=models)
    # short shutdown_timeout: on SIGTERM don't wait for stalled/slow handlers
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.25)
    await runner.setup()
    try:
        site = web.TCPSite(runner, args.host, args.port)
        await site.start()
        port = runner.addresses[0][1]
        host = f"[{args.host}]" if ":" in args.host else args.host
        print(f"LISTENING http://{host}:{port}/v1", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    asyncio.run(serve(parse_args(argv)))


if __name__ == "__main__":
    main()
