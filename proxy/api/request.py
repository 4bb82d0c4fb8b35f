"""Parsing and validating the Chat Completions request body without a schema library.

Bodies can be tens of megabytes, so validation only looks at the fields the proxy relies on; the upstream
checks the rest and its 400s are passed back.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from itertools import chain
from typing import Any

import orjson

from proxy.errors import ProxyError, invalid_request

_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
_CONTAINERS = frozenset({dict, list})  # what orjson.loads makes of JSON objects and arrays

# How deep a body may nest objects and arrays, the body itself being level 1. orjson parses 1024 levels
# but serialises only 254, and the proxy serialises bodies again with wrappers around them (the fast
# path, the cache key, the sandbox's context); litellm's path recurses in Python. 128 leaves ample room
# for those while real requests (JSON schemas in `tools` and `response_format` included) stay far below.
MAX_JSON_DEPTH = 128
LARGE_BODY_BYTES = 16 << 20  # from here on a body is parsed by `_large_loads`
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


@dataclass(frozen=True)
class RLMOptions:
    """The optional `rlm` object of a request: per-run limits, clamped later to the server's caps."""

    max_iterations: int | None = None
    max_depth: int | None = None
    max_subcalls: int | None = None
    max_cost_usd: float | None = None
    timeout_s: float | None = None
    sub_model: str | None = None


_RLM_INT_MINIMUMS = {"max_iterations": 1, "max_depth": 1, "max_subcalls": 0}
_RLM_POSITIVE_NUMBERS = ("max_cost_usd", "timeout_s")
_RLM_STRINGS = ("sub_model",)
_RLM_FIELDS = (*_RLM_INT_MINIMUMS, *_RLM_POSITIVE_NUMBERS, *_RLM_STRINGS)


@dataclass(frozen=True)
class ChatRequest:
    body: dict[str, Any]  # forwarded upstream as is (without `rlm`, which is the proxy's own)
    model: str
    stream: bool
    include_usage: bool
    rlm: RLMOptions = RLMOptions()

    @property
    def messages(self) -> list[dict[str, Any]]:
        return self.body["messages"]


def parse_json_body(raw: bytes | bytearray) -> dict[str, Any]:
    """A request body as a JSON object, refused with a 400 when it is not one or nests too deep.

    Every route that reads a JSON body parses it here, so that no body can reach a serialiser that
    would fail on it. A large bytearray body is consumed (emptied) as it is parsed.
    """
    if not raw or raw.isspace():  # (strip() would copy a body of many megabytes)
        raise invalid_request("The request body is empty; expected a JSON object.", code="invalid_json")
    try:
        body = _large_loads(raw) if len(raw) >= LARGE_BODY_BYTES else orjson.loads(raw)
    except (ValueError, RecursionError) as exc:  # orjson.JSONDecodeError and UnicodeDecodeError included
        detail = "it nests too deep" if isinstance(exc, RecursionError) else exc
        raise invalid_request(f"The request body is not valid JSON: {detail}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise invalid_request("The request body must be a JSON object.", code="invalid_json")
    for name, value in body.items():
        if _nests_deeper_than(value, MAX_JSON_DEPTH - 1):
            raise invalid_request(f"'{name}' nests objects and arrays too deep: a request body may have at "
                                  f"most {MAX_JSON_DEPTH} levels, the body itself included.", param=name,
                                  code="json_too_deep")
    return body


def _large_loads(raw: bytes | bytearray) -> Any:
    """A large body parsed with the standard library, read as orjson reads it. Its parser keeps no copy
    of the strings besides the text, so the body (when a bytearray, ours) is freed before parsing: the
    peak is the text and the parsed body, where orjson holds the body, a copy inside its parser and the
    parsed body (three times a prompt of 40 MB, against two). It is slower: about twice orjson's time for
    a 10 MB prompt of lines (23 against 10 ms), hence only from LARGE_BODY_BYTES on. Surrogate escapes
    go to orjson, which refuses a lone one (the standard library would make a str that no encoder
    takes)."""
    if _SURROGATE_ESCAPE.search(raw):
        return orjson.loads(raw)
    text = raw.decode()
    if isinstance(raw, bytearray):
        raw.clear()
    return json.loads(text, parse_int=_as_orjson_int, parse_float=_finite, parse_constant=_no_constant)


def _as_orjson_int(digits: str) -> int | float:
    value = int(digits)
    return value if -(2**63) <= value < 2**64 else float(value)  # orjson: beyond 64 bits, a float


def _finite(digits: str) -> float:
    value = float(digits)
    if math.isinf(value):
        raise ValueError(f"number is infinity when parsed as double: {digits[:40]}")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _nests_deeper_than(value: Any, limit: int) -> bool:
    """Whether `value` has more than `limit` levels of objects and arrays (a scalar has none).

    Walks one level at a time and looks only at containers, never into strings: a prompt of 100 MB in
    a few strings costs nothing, and the work is bounded by the number of values the parser made.
    """
    level = [value] if type(value) in _CONTAINERS else []
    for _ in range(limit):
        if not level:
            return False
        items = chain.from_iterable(item.values() if type(item) is dict else item for item in level)
        level = [item for item in items if type(item) in _CONTAINERS]
    return bool(level)


def parse_chat_request(raw: bytes | bytearray) -> ChatRequest:
    body = parse_json_body(raw)
    model = model_name(body)
    check_messages(required(body, "messages", list, "an array"))
    stream, include_usage = stream_flags(body)
    rlm = rlm_options(body.pop("rlm", None))
    return ChatRequest(body=body, model=model, stream=stream, include_usage=include_usage, rlm=rlm)


def model_name(body: dict[str, Any]) -> str:
    model = required(body, "model", str, "a string")
    if not model:
        raise invalid_request("'model' must not be empty.", param="model", code="invalid_value")
    return model


def stream_flags(body: dict[str, Any]) -> tuple[bool, bool]:
    """`stream`, and whether the client asked for usage in the stream (`stream_options.include_usage`)."""
    stream = optional(body, "stream", bool, "a boolean") or False
    options = optional(body, "stream_options", dict, "an object")
    if options is not None and not stream:
        raise invalid_request("'stream_options' is only allowed when 'stream' is true.",
                              param="stream_options", code="invalid_value")
    include_usage = bool(options and optional(options, "include_usage", bool, "a boolean",
                                               param="stream_options.include_usage"))
    return stream, include_usage


def check_text_input(body: dict[str, Any], name: str) -> None:
    """A required text input as the OpenAI API takes it (embeddings' `input`, legacy completions'
    `prompt`): a string, an array of strings, an array of token ids, or an array of token arrays."""
    value = required(body, name, str | list, "a string or an array")
    if isinstance(value, str):
        return
    if not value:
        raise invalid_request(f"'{name}' must not be an empty array.", param=name, code="invalid_value")
    first = value[0]
    kind = str if isinstance(first, str) else list if isinstance(first, list) else int
    described = {str: "an array of strings", list: "an array of token arrays",
                 int: "an array of token ids (integers)"}[kind]
    for index, item in enumerate(value):
        if not _is_kind(item, kind) or (kind is list and not (item and all(_is_kind(t, int) for t in item))):
            raise invalid_request(f"'{name}[{index}]' does not fit '{name}' as {described}: '{name}' must be "
                                  "a string, an array of strings, an array of token ids or an array of "
                                  "non-empty token arrays.", param=f"{name}[{index}]", code="invalid_type")


def _is_kind(item: Any, kind: type) -> bool:
    return isinstance(item, kind) and not isinstance(item, bool)


def rlm_options(value: Any) -> RLMOptions:
    if value is None:
        return RLMOptions()
    if not isinstance(value, dict):
        raise wrong_type("rlm", "an object", value)
    unknown = sorted(set(value) - set(_RLM_FIELDS))
    if unknown:
        raise invalid_request(f"Unknown field(s) in 'rlm': {', '.join(unknown)}; allowed: "
                              f"{', '.join(_RLM_FIELDS)}.", param=f"rlm.{unknown[0]}", code="invalid_value")
    for name, item in value.items():
        param = f"rlm.{name}"
        if item is None:
            continue
        if name in _RLM_STRINGS:
            if not isinstance(item, str) or not item:
                raise wrong_type(param, "a non-empty string", item)
        elif isinstance(item, bool) or not isinstance(item, int | float):
            raise wrong_type(param, "a number", item)
        elif name in _RLM_INT_MINIMUMS and (not isinstance(item, int) or item < _RLM_INT_MINIMUMS[name]):
            raise invalid_request(f"'{param}' must be an integer >= {_RLM_INT_MINIMUMS[name]}, got {item}.",
                                  param=param, code="invalid_value")
        elif name in _RLM_POSITIVE_NUMBERS and item <= 0:
            raise invalid_request(f"'{param}' must be positive, got {item}.", param=param,
                                  code="invalid_value")
    return RLMOptions(**value)


def required(body: dict[str, Any], name: str, kind: type, described: str) -> Any:
    if name not in body:
        raise invalid_request(f"Missing required parameter: '{name}'.", param=name,
                              code="missing_required_parameter")
    value = optional(body, name, kind, described)
    if value is None:
        raise wrong_type(name, described, value)
    return value


def optional(body: dict[str, Any], name: str, kind: type, described: str, param: str | None = None) -> Any:
    value = body.get(name)
    if value is not None and not isinstance(value, kind):
        raise wrong_type(param or name, described, value)
    return value


def wrong_type(param: str, described: str, value: Any) -> ProxyError:
    return invalid_request(f"'{param}' must be {described}, got {type(value).__name__}.", param=param,
                           code="invalid_type")


def check_messages(messages: list[Any]) -> None:
    if not messages:
        raise invalid_request("'messages' must contain at least one message.", param="messages",
                              code="invalid_value")
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise wrong_type(where, "an object", message)
        role = message.get("role")
        if role not in _ROLES:
            raise invalid_request(f"'{where}.role' must be one of {', '.join(sorted(_ROLES))}.",
                                  param=f"{where}.role", code="invalid_value")
        content = message.get("content")
        if content is not None and not isinstance(content, str | list):
            raise wrong_type(f"{where}.content", "a string or an array of content parts", content)
        if isinstance(content, list) and not all(isinstance(part, dict) for part in content):
            raise wrong_type(f"{where}.content", "an array of content-part objects", content)
