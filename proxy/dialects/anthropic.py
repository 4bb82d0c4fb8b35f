"""The Anthropic Messages dialect as pure functions: a Messages request in Chat Completions form, a chat
completion as a Message, and Anthropic's SSE events written from chat deltas (or RLM progress).

Hand-written rather than litellm's adapter (`LiteLLMAnthropicMessagesAdapter`): that one rewrites requests
by the model name's provider (here an alias such as `mock`, for which it prints litellm's provider list to
stdout on every call) and streams from litellm's pydantic chunk objects, where the proxy holds plain dicts.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from proxy.api.request import ChatRequest, optional, parse_json_body, required, rlm_options, wrong_type
from proxy.api.streaming import chained
from proxy.errors import ProxyError, invalid_request

# Blocks a chat conversation cannot carry and a model does not need again: dropped from the history.
_DROPPED_BLOCKS = frozenset({"thinking", "redacted_thinking"})
_USER_BLOCKS = frozenset({"text", "image", "document", "tool_result"}) | _DROPPED_BLOCKS
_ASSISTANT_BLOCKS = frozenset({"text", "tool_use"}) | _DROPPED_BLOCKS
# Chat's finish reasons in Anthropic's words.
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use",
                "function_call": "tool_use", "content_filter": "refusal"}
# `thinking.budget_tokens` as a chat `reasoning_effort` (for upstreams that reason).
ThinkingEffort = Literal["low", "medium", "high"]
_EFFORT_BOUNDS: tuple[tuple[int, ThinkingEffort], ...] = ((4096, "low"), (16384, "medium"))


@dataclass(frozen=True)
class MessagesRequest:
    body: dict[str, Any]  # the Messages body as sent, without the proxy's own `rlm` (for native upstreams)
    chat: ChatRequest  # the same request in Chat Completions form
    reasoning_effort: ThinkingEffort | None = None  # from `thinking`, for upstreams that reason


def parse_messages_request(raw: bytes | bytearray, *, count_only: bool = False) -> MessagesRequest:
    """A Messages body, checked and translated; `count_only` for count_tokens (no `max_tokens`)."""
    body = parse_json_body(raw)
    model = required(body, "model", str, "a string")
    if not model:
        raise invalid_request("'model' must not be empty.", param="model", code="invalid_value")
    chat: dict[str, Any] = {"model": model, "messages": [*_system_messages(body.get("system")),
                                                         *_chat_messages(required(body, "messages", list,
                                                                                  "an array"))]}
    if not count_only:
        max_tokens = required(body, "max_tokens", int, "an integer")
        if isinstance(max_tokens, bool) or max_tokens < 1:
            raise invalid_request("'max_tokens' must be an integer >= 1.", param="max_tokens",
                                  code="invalid_value")
        chat["max_tokens"] = max_tokens
    chat.update(_tools(body))
    stream = bool(optional(body, "stream", bool, "a boolean")) and not count_only
    if stream:
        chat["stream"] = True
    stops = optional(body, "stop_sequences", list, "an array of strings")
    if stops:
        if not all(isinstance(stop, str) for stop in stops):
            raise wrong_type("stop_sequences", "an array of strings", stops)
        chat["stop"] = stops
    for name in ("temperature", "top_p"):
        value = optional(body, name, int | float, "a number")
        if value is not None:
            chat[name] = value
    metadata = optional(body, "metadata", dict, "an object")
    if metadata and isinstance(metadata.get("user_id"), str):
        chat["user"] = metadata["user_id"]
    rlm = rlm_options(body.pop("rlm", None))
    return MessagesRequest(body=body, reasoning_effort=_effort(optional(body, "thinking", dict, "an object"),
                                                    body.get("output_config")),
                           chat=ChatRequest(body=chat, model=model, stream=stream, include_usage=stream,
                                            rlm=rlm))


def _effort(thinking: dict[str, Any] | None, output_config: Any) -> ThinkingEffort | None:
    """How hard a reasoning upstream should think: `thinking.budget_tokens` in bands, or for adaptive
    thinking the client's `output_config.effort`."""
    if not thinking:
        return None
    if thinking.get("type") == "adaptive" and isinstance(output_config, dict):
        effort = output_config.get("effort")
        return effort if effort in ("low", "medium", "high") else None
    if thinking.get("type") != "enabled":
        return None
    budget = thinking.get("budget_tokens")
    if not isinstance(budget, int) or isinstance(budget, bool):
        raise wrong_type("thinking.budget_tokens", "an integer", budget)
    return next((effort for bound, effort in _EFFORT_BOUNDS if budget < bound), "high")


def _system_messages(system: Any, where: str = "system") -> list[dict[str, Any]]:
    """System text (a string or text blocks; `cache_control` left out) as one chat system message."""
    if system is None:
        return []
    if isinstance(system, str):
        return [{"role": "system", "content": system}] if system else []
    if not isinstance(system, list):
        raise wrong_type(where, "a string or an array of text blocks", system)
    texts = []
    for index, block in enumerate(system):
        _check_block(block, f"{where}[{index}]", frozenset({"text"}))
        texts.append(_text_of(block, f"{where}[{index}]"))
    return [{"role": "system", "content": "\n\n".join(texts)}] if texts else []


def _check_block(block: Any, where: str, allowed: frozenset[str]) -> str:
    if not isinstance(block, dict):
        raise wrong_type(where, "a content block object", block)
    kind = block.get("type")
    if not isinstance(kind, str):
        raise invalid_request(f"'{where}.type' must be a string naming the block's type.",
                              param=f"{where}.type", code="invalid_value")
    if kind not in allowed:
        raise invalid_request(f"'{where}' has type '{kind}', which is not supported here; supported: "
                              f"{', '.join(sorted(allowed))}.", param=f"{where}.type", code="invalid_value")
    return kind


def _text_of(block: dict[str, Any], where: str) -> str:
    text = block.get("text")
    if not isinstance(text, str):
        raise wrong_type(f"{where}.text", "a string", text)
    return text


def _chat_messages(messages: list[Any]) -> list[dict[str, Any]]:
    if not messages:
        raise invalid_request("'messages' must contain at least one message.", param="messages",
                              code="invalid_value")
    translated: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise wrong_type(where, "an object", message)
        role = message.get("role")
        if role not in ("user", "assistant", "system"):
            raise invalid_request(f"'{where}.role' must be 'user' or 'assistant' (or 'system').",
                                  param=f"{where}.role", code="invalid_value")
        content = message.get("content")
        if role == "system":  # Claude Code puts its environment in one, after the user's message
            translated += _system_messages(content, f"{where}.content")
        elif isinstance(content, str):
            translated.append({"role": role, "content": content})
        elif isinstance(content, list):
            translated += (_user_messages if role == "user" else _assistant_messages)(content, where)
        else:
            raise wrong_type(f"{where}.content", "a string or an array of content blocks", content)
    return translated


def _user_messages(blocks: list[Any], where: str) -> list[dict[str, Any]]:
    """Tool results become `tool` messages (first: chat wants them right after the calls), the rest one
    user message."""
    tool_messages, parts = [], []
    for index, block in enumerate(blocks):
        at = f"{where}.content[{index}]"
        kind = _check_block(block, at, _USER_BLOCKS)
        if kind == "text":
            parts.append({"type": "text", "text": _text_of(block, at)})
        elif kind in ("image", "document"):
            parts.append(_media_part(block, at))
        elif kind == "tool_result":
            tool_messages.append(_tool_message(block, at))
    if not parts:
        return tool_messages
    return [*tool_messages, {"role": "user", "content": parts}]


def _media_part(block: dict[str, Any], where: str) -> dict[str, Any]:
    source = block.get("source")
    if not isinstance(source, dict):
        raise wrong_type(f"{where}.source", "an object", source)
    kind = source.get("type")
    if kind == "base64" and isinstance(source.get("data"), str) and isinstance(source.get("media_type"), str):
        url = f"data:{source['media_type']};base64,{source['data']}"
        if block["type"] == "document":
            return {"type": "file", "file": {"file_data": url}}
        return {"type": "image_url", "image_url": {"url": url}}
    if kind == "url" and isinstance(source.get("url"), str) and block["type"] == "image":
        return {"type": "image_url", "image_url": {"url": source["url"]}}
    if kind == "text" and isinstance(source.get("data"), str) and block["type"] == "document":
        return {"type": "text", "text": source["data"]}
    raise invalid_request(f"'{where}.source' is not supported here: images take base64 or url sources, "
                          f"documents base64 or text sources.", param=f"{where}.source", code="invalid_value")


def _tool_message(block: dict[str, Any], where: str) -> dict[str, Any]:
    tool_use_id = block.get("tool_use_id")
    if not isinstance(tool_use_id, str) or not tool_use_id:
        raise wrong_type(f"{where}.tool_use_id", "a non-empty string", tool_use_id)
    content = block.get("content", "")
    if isinstance(content, list):
        texts = []
        for index, part in enumerate(content):
            at = f"{where}.content[{index}]"
            if _check_block(part, at, frozenset({"text", "image"})) == "text":
                texts.append(_text_of(part, at))
        content = "\n".join(texts)  # a chat tool message carries text only: images are left out
    elif not isinstance(content, str):
        raise wrong_type(f"{where}.content", "a string or an array of content blocks", content)
    if block.get("is_error") is True:
        content = f"Error: {content}"
    return {"role": "tool", "tool_call_id": tool_use_id, "content": content}


def _assistant_messages(blocks: list[Any], where: str) -> list[dict[str, Any]]:
    texts, calls = [], []
    for index, block in enumerate(blocks):
        at = f"{where}.content[{index}]"
        kind = _check_block(block, at, _ASSISTANT_BLOCKS)
        if kind == "text":
            texts.append(_text_of(block, at))
        elif kind == "tool_use":
            calls.append(_tool_call(block, at))
    if not texts and not calls:
        return []
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None}
    if calls:
        message["tool_calls"] = calls
    return [message]


def _tool_call(block: dict[str, Any], where: str) -> dict[str, Any]:
    for name in ("id", "name"):
        if not isinstance(block.get(name), str) or not block[name]:
            raise wrong_type(f"{where}.{name}", "a non-empty string", block.get(name))
    arguments = block.get("input", {})
    if not isinstance(arguments, dict):
        raise wrong_type(f"{where}.input", "an object", arguments)
    return {"id": block["id"], "type": "function",
            "function": {"name": block["name"], "arguments": orjson.dumps(arguments).decode()}}


def _tools(body: dict[str, Any]) -> dict[str, Any]:
    """`tools` and `tool_choice` in chat form. Anthropic's server tools (typed, e.g. `web_search_...`) run
    at Anthropic, which a chat upstream cannot do: they are left out."""
    tools = optional(body, "tools", list, "an array")
    functions = []
    for index, tool in enumerate(tools or []):
        where = f"tools[{index}]"
        if not isinstance(tool, dict):
            raise wrong_type(where, "an object", tool)
        if tool.get("type") not in (None, "custom"):
            continue
        name = tool.get("name")
        if not isinstance(name, str) or not name:
            raise wrong_type(f"{where}.name", "a non-empty string", name)
        schema = tool.get("input_schema")
        if not isinstance(schema, dict):
            raise wrong_type(f"{where}.input_schema", "an object", schema)
        function = {"name": name, "parameters": schema}
        if isinstance(tool.get("description"), str):
            function["description"] = tool["description"]
        functions.append({"type": "function", "function": function})
    translated: dict[str, Any] = {"tools": functions} if functions else {}
    choice = optional(body, "tool_choice", dict, "an object")
    if choice is None or not functions:
        return translated
    kind = choice.get("type")
    if kind == "tool":
        if not isinstance(choice.get("name"), str):
            raise wrong_type("tool_choice.name", "a string", choice.get("name"))
        translated["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    elif kind in ("auto", "any", "none"):
        translated["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}[kind]
    else:
        raise invalid_request("'tool_choice.type' must be one of auto, any, tool, none.",
                              param="tool_choice.type", code="invalid_value")
    if choice.get("disable_parallel_tool_use") is True:
        translated["parallel_tool_calls"] = False
    return translated


def without_unsigned_thinking(body: dict[str, Any]) -> dict[str, Any]:
    """The body without the thinking blocks that have no signature: the proxy's own (RLM progress), which
    Anthropic would refuse when a client sends them back. The body is copied only when there are some."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not any(_unsigned_thinking(message) for message in messages):
        return body
    kept = [{**message, "content": [block for block in message["content"] if not _is_unsigned(block)]}
            if _unsigned_thinking(message) else message for message in messages]
    return {**body, "messages": kept}


def _unsigned_thinking(message: Any) -> bool:
    return isinstance(message, dict) and message.get("role") == "assistant" and isinstance(
        message.get("content"), list) and any(_is_unsigned(block) for block in message["content"])


def _is_unsigned(block: Any) -> bool:
    return isinstance(block, dict) and block.get("type") == "thinking" and not block.get("signature")


# ---------------------------------------------------------------------------------------------------------
# Answers


def usage(chat_usage: Any) -> dict[str, int]:
    """Chat usage in Anthropic's terms."""
    counts = chat_usage if isinstance(chat_usage, dict) else {}
    return {"input_tokens": int(counts.get("prompt_tokens") or 0),
            "output_tokens": int(counts.get("completion_tokens") or 0)}


def chat_usage(anthropic_item: dict[str, Any]) -> dict[str, Any] | None:
    """Usage in chat terms from a native Message or stream event (input counted once: at message_start)."""
    kind = anthropic_item.get("type")
    source = anthropic_item.get("message") if kind == "message_start" else anthropic_item
    counts = source.get("usage") if isinstance(source, dict) else None
    if kind not in ("message", "message_start", "message_delta") or not isinstance(counts, dict):
        return None
    prompt = counts.get("input_tokens") if kind != "message_delta" else 0
    completion = counts.get("output_tokens") if kind != "message_start" else 0
    return {"prompt_tokens": prompt or 0, "completion_tokens": completion or 0}


def message(message_id: str, model: str, blocks: list[dict[str, Any]], stop_reason: str | None,
            counts: dict[str, int]) -> dict[str, Any]:
    return {"id": message_id, "type": "message", "role": "assistant", "model": model, "content": blocks,
            "stop_reason": stop_reason, "stop_sequence": None, "usage": counts}


def tool_use_block(call: dict[str, Any]) -> dict[str, Any]:
    """A chat tool call as a `tool_use` block."""
    function = call.get("function") or {}
    try:
        arguments = orjson.loads(function.get("arguments") or "{}")
    except orjson.JSONDecodeError:
        arguments = None
    if not isinstance(arguments, dict):
        raise ProxyError(502, "The upstream model called a tool with arguments that are not a JSON object.",
                         code="upstream_malformed_response")
    return {"type": "tool_use", "id": call.get("id") or "", "name": function.get("name") or "",
            "input": arguments}


def message_from_completion(completion: dict[str, Any], model: str) -> dict[str, Any]:
    choice = (completion.get("choices") or [{}])[0]
    reply = choice.get("message") or {}
    blocks: list[dict[str, Any]] = []
    if reply.get("reasoning_content"):
        blocks.append({"type": "thinking", "thinking": reply["reasoning_content"], "signature": ""})
    if reply.get("content"):
        blocks.append({"type": "text", "text": reply["content"]})
    blocks += [tool_use_block(call) for call in reply.get("tool_calls") or []]
    stop = STOP_REASONS.get(choice.get("finish_reason") or "stop", "end_turn")
    return message(f"msg_{completion.get('id') or ''}", model, blocks, stop, usage(completion.get("usage")))


def sse_event(payload: dict[str, Any]) -> bytes:
    return b"event: " + payload["type"].encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


def error_events(error: ProxyError) -> list[bytes]:
    """How a started Messages stream ends in an error."""
    return [sse_event(error.payload("anthropic"))]


PING = sse_event({"type": "ping"})


@dataclass
class MessageStream:
    """Writes one Message's SSE events; blocks open and close as the kind of delta changes."""

    message_id: str
    model: str
    _block: str | None = None  # the open block's type
    _index: int = -1
    _tools: dict[int, int] = field(default_factory=dict)  # chat tool-call index -> block index

    def start(self) -> list[bytes]:
        opening = message(self.message_id, self.model, [], None, {"input_tokens": 0, "output_tokens": 0})
        return [sse_event({"type": "message_start", "message": opening}), PING]

    def text(self, text: str) -> list[bytes]:
        return self._delta("text", {"type": "text", "text": ""}, {"type": "text_delta", "text": text})

    def thinking(self, text: str) -> list[bytes]:
        # A proxy has no signature to give: the block's is empty (the bridge drops thinking blocks that
        # come back in a conversation).
        return self._delta("thinking", {"type": "thinking", "thinking": "", "signature": ""},
                           {"type": "thinking_delta", "thinking": text})

    def tool_call(self, delta: dict[str, Any]) -> list[bytes]:
        """A chat tool-call delta: the first of a call opens its block, arguments follow as JSON pieces."""
        events = []
        index = delta.get("index", 0)
        function = delta.get("function") or {}
        if index not in self._tools:
            events += self._open("tool_use", {"type": "tool_use", "id": delta.get("id") or "",
                                              "name": function.get("name") or "", "input": {}})
            self._tools[index] = self._index
        if function.get("arguments"):
            delta = {"type": "input_json_delta", "partial_json": function["arguments"]}
            events.append(self._event("content_block_delta", index=self._tools[index], delta=delta))
        return events

    def finish(self, stop_reason: str, counts: dict[str, int], **extra: Any) -> list[bytes]:
        """The closing events; `extra` goes in `message_delta` (the proxy's `rlm` summary: the SDKs keep
        unknown fields)."""
        return [*self._close(), self._event("message_delta", delta={"stop_reason": stop_reason,
                                                                    "stop_sequence": None}, usage=counts,
                                            **extra),
                self._event("message_stop")]

    def _delta(self, kind: str, start: dict[str, Any], delta: dict[str, Any]) -> list[bytes]:
        events = self._open(kind, start) if self._block != kind else []
        return [*events, self._event("content_block_delta", index=self._index, delta=delta)]

    def _open(self, kind: str, start: dict[str, Any]) -> list[bytes]:
        events = self._close()
        self._block, self._index = kind, self._index + 1
        return [*events, self._event("content_block_start", index=self._index, content_block=start)]

    def _close(self) -> list[bytes]:
        if self._block is None:
            return []
        self._block = None
        return [self._event("content_block_stop", index=self._index)]

    @staticmethod
    def _event(kind: str, **fields: Any) -> bytes:
        return sse_event({"type": kind, **fields})


async def relay_chat_stream(first: dict[str, Any] | None, chunks: AsyncIterator[dict[str, Any]],
                            writer: MessageStream) -> AsyncIterator[bytes]:
    """A streamed chat completion as a Message's events (usage arrives at the end: it goes in
    message_delta, which the SDKs read as the final count)."""
    for event in writer.start():
        yield event
    finish_reason, counts = "stop", None
    pending = [first] if first is not None else []
    async for chunk in chained(pending, chunks):
        if chunk.get("usage"):
            counts = chunk["usage"]
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            events = writer.thinking(delta["reasoning_content"]) if delta.get("reasoning_content") else []
            if delta.get("content"):
                events += writer.text(delta["content"])
            for call in delta.get("tool_calls") or []:
                events += writer.tool_call(call)
            finish_reason = choice.get("finish_reason") or finish_reason
            for event in events:
                yield event
    for event in writer.finish(STOP_REASONS.get(finish_reason, "end_turn"), usage(counts)):
        yield event

