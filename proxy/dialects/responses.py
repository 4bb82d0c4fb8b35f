"""The Responses API as Chat Completions: requests, input items and answers, translated both ways.

Pure functions over JSON dicts (no HTTP): the route parses a body with `parse_request`, builds the chat
body with `chat_body` (the earlier conversation, if any, comes from the response store as items), and
renders a chat completion with `response_from_completion` or a stream with
`proxy.dialects.responses_stream`. What chat cannot take is dropped (README, "Responses API"); what the
proxy cannot honour is refused with a 400.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from proxy.api.request import RLMOptions, optional, required, rlm_options, wrong_type
from proxy.errors import invalid_request

_ROLES = frozenset({"user", "assistant", "system", "developer"})
_TEXT_PARTS = frozenset({"input_text", "output_text", "refusal"})
_ITEM_TYPES = ("message", "function_call", "function_call_output", "reasoning")
# Request keys echoed in the Response object, with OpenAI's defaults.
_ECHOED = {"instructions": None, "max_output_tokens": None, "metadata": {}, "parallel_tool_calls": True,
           "previous_response_id": None, "reasoning": {"effort": None, "summary": None}, "store": True,
           "temperature": 1.0, "text": {"format": {"type": "text"}}, "tool_choice": "auto", "tools": [],
           "top_p": 1.0, "truncation": "disabled", "user": None}
_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


@dataclass(frozen=True)
class ResponsesRequest:
    body: dict[str, Any]  # the client's body without `rlm` (what a native upstream gets)
    model: str
    stream: bool
    store: bool
    previous_response_id: str | None
    input_items: list[dict[str, Any]]  # this request's input as items, each with an id
    rlm: RLMOptions


def parse_request(body: dict[str, Any]) -> ResponsesRequest:
    """Check the fields the proxy relies on; unknown top-level keys are accepted (and dropped later)."""
    model = required(body, "model", str, "a string")
    if not model:
        raise invalid_request("'model' must not be empty.", param="model", code="invalid_value")
    if body.get("background"):
        raise invalid_request("'background' responses are not supported by this proxy; send the request "
                              "without it (streaming keeps a long answer's connection alive).",
                              param="background", code="unsupported_parameter")
    optional(body, "instructions", str, "a string")
    previous = optional(body, "previous_response_id", str, "a string")
    tools = optional(body, "tools", list, "an array") or []
    for index, tool in enumerate(tools):
        if not isinstance(tool, dict) or not isinstance(tool.get("type"), str):
            raise wrong_type(f"tools[{index}]", "a tool object with a 'type'", tool)
        if tool["type"] == "function" and not (isinstance(tool.get("name"), str) and tool["name"]):
            raise invalid_request(f"'tools[{index}].name' must be a non-empty string.",
                                  param=f"tools[{index}].name", code="invalid_value")
    for name in ("metadata", "reasoning", "text"):
        optional(body, name, dict, "an object")
    rlm = rlm_options(body.pop("rlm", None))
    return ResponsesRequest(body=body, model=model, stream=bool(optional(body, "stream", bool, "a boolean")),
                            store=optional(body, "store", bool, "a boolean") is not False,
                            previous_response_id=previous, input_items=input_items(body), rlm=rlm)


def input_items(body: dict[str, Any]) -> list[dict[str, Any]]:
    """`input` as a list of items with ids: a string is one user message."""
    value = required(body, "input", str | list, "a string or an array of input items")
    if isinstance(value, str):
        return [{"id": new_id("msg"), "type": "message", "role": "user",
                 "content": [{"type": "input_text", "text": value}]}]
    if not value:
        raise invalid_request("'input' must contain at least one item.", param="input", code="invalid_value")
    return [_item(item, f"input[{index}]") for index, item in enumerate(value)]


def _item(item: Any, where: str) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise wrong_type(where, "an object", item)
    kind = item.get("type", "message" if "role" in item else None)
    if kind == "message":
        return _message_item(item, where)
    if kind == "function_call":
        for name in ("call_id", "name", "arguments"):
            _text_field(item, name, where)
        return {"id": item.get("id") or new_id("fc"), "status": "completed", **item}
    if kind == "function_call_output":
        _text_field(item, "call_id", where)
        output = item.get("output")
        if not isinstance(output, str) and not (isinstance(output, list) and _parts_ok(output)):
            raise wrong_type(f"{where}.output", "a string or an array of input_text parts", output)
        return {"id": item.get("id") or new_id("fco"), "status": "completed", **item}
    if kind == "reasoning":
        return item  # carried in the conversation, never sent to a chat model
    raise invalid_request(f"'{where}.type' {kind!r} is not supported: this proxy takes input items of type "
                          f"{', '.join(_ITEM_TYPES)}.", param=f"{where}.type", code="invalid_value")


def _text_field(item: dict[str, Any], name: str, where: str) -> None:
    if not isinstance(item.get(name), str):
        raise wrong_type(f"{where}.{name}", "a string", item.get(name))


def _parts_ok(parts: list[Any]) -> bool:
    return all(isinstance(part, dict) and part.get("type") in _TEXT_PARTS
               and isinstance(part.get("text"), str) for part in parts)


def _message_item(item: dict[str, Any], where: str) -> dict[str, Any]:
    role = item.get("role")
    if role not in _ROLES:
        raise invalid_request(f"'{where}.role' must be one of {', '.join(sorted(_ROLES))}.",
                              param=f"{where}.role", code="invalid_value")
    content = item.get("content")
    if isinstance(content, str):
        content = [{"type": "output_text" if role == "assistant" else "input_text", "text": content}]
    elif not isinstance(content, list):
        raise wrong_type(f"{where}.content", "a string or an array of content parts", content)
    for index, part in enumerate(content):
        _check_part(part, f"{where}.content[{index}]")
    return {**item, "id": item.get("id") or new_id("msg"), "type": "message", "content": content}


def _check_part(part: Any, where: str) -> None:
    if not isinstance(part, dict):
        raise wrong_type(where, "a content-part object", part)
    kind = part.get("type")
    if kind in _TEXT_PARTS:
        key = "refusal" if kind == "refusal" and "text" not in part else "text"
        if not isinstance(part.get(key), str):
            raise wrong_type(f"{where}.{key}", "a string", part.get(key))
    elif kind == "input_image":
        if not isinstance(part.get("image_url"), str):
            raise invalid_request(f"'{where}' needs an 'image_url' (a URL or a data: URL); images by "
                                  "'file_id' are not supported by this proxy.", param=where,
                                  code="unsupported_value")
    elif kind == "input_file":
        if not any(isinstance(part.get(key), str) for key in ("file_id", "file_data", "file_url")):
            raise invalid_request(f"'{where}' needs a 'file_id', 'file_data' or 'file_url'.", param=where,
                                  code="invalid_value")
    else:
        raise invalid_request(f"'{where}.type' {kind!r} is not a supported content type (input_text, "
                              "output_text, refusal, input_image, input_file).", param=f"{where}.type",
                              code="invalid_value")


# ---------------------------------------------------------------------------------------------------------
# Request → Chat Completions


def chat_body(request: ResponsesRequest, history: list[dict[str, Any]]) -> dict[str, Any]:
    """The Chat Completions body asking what `request` asks, after the `history` items.

    `reasoning.effort` becomes `reasoning_effort`, which the route removes for models that refuse it.
    """
    body = request.body
    messages: list[dict[str, Any]] = []
    if body.get("instructions"):
        messages.append({"role": "system", "content": body["instructions"]})
    messages += chat_messages([*history, *request.input_items])
    chat: dict[str, Any] = {"model": request.model, "messages": messages, "stream": request.stream}
    tools = [_chat_tool(tool) for tool in body.get("tools") or [] if tool["type"] == "function"]
    if tools:
        chat["tools"] = tools
        if (choice := _chat_tool_choice(body.get("tool_choice"))) is not None:
            chat["tool_choice"] = choice
        if isinstance(body.get("parallel_tool_calls"), bool):
            chat["parallel_tool_calls"] = body["parallel_tool_calls"]
    elif body.get("tool_choice") == "none":
        chat["tool_choice"] = "none"
    for source, target in (("max_output_tokens", "max_tokens"), ("temperature", "temperature"),
                           ("top_p", "top_p"), ("user", "user")):
        if body.get(source) is not None:
            chat[target] = body[source]
    if (response_format := _response_format((body.get("text") or {}).get("format"))) is not None:
        chat["response_format"] = response_format
    effort = (body.get("reasoning") or {}).get("effort")
    if isinstance(effort, str):
        chat["reasoning_effort"] = effort
    if request.stream:
        chat["stream_options"] = {"include_usage": True}
    return chat


def chat_messages(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Conversation items as chat messages: a function call joins the assistant message before it."""
    messages: list[dict[str, Any]] = []
    for item in items:
        kind = item.get("type", "message")
        if kind == "message":
            role = "system" if item["role"] == "developer" else item["role"]
            messages.append({"role": role, "content": _chat_content(item["content"])})
        elif kind == "function_call":
            call = {"id": item["call_id"], "type": "function",
                    "function": {"name": item["name"], "arguments": item["arguments"]}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item["output"]
            messages.append({"role": "tool", "tool_call_id": item["call_id"],
                             "content": output if isinstance(output, str) else _joined_text(output)})
    return messages


def _joined_text(parts: list[dict[str, Any]]) -> str:
    return "".join(part.get("text") or part.get("refusal") or "" for part in parts)


def _chat_content(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    if all(part["type"] in _TEXT_PARTS for part in parts):
        return _joined_text(parts)  # a string: what every provider takes for every role
    chat_parts: list[dict[str, Any]] = []
    for part in parts:
        if part["type"] in _TEXT_PARTS:
            chat_parts.append({"type": "text", "text": _joined_text([part])})
        elif part["type"] == "input_image":
            image = {"url": part["image_url"], **({"detail": part["detail"]} if part.get("detail") else {})}
            chat_parts.append({"type": "image_url", "image_url": image})
        else:
            chat_parts.append({"type": "file", "file": {key: part[key] for key in ("file_id", "file_data",
                                                                                "filename") if key in part}})
    return chat_parts


def _chat_tool(tool: dict[str, Any]) -> dict[str, Any]:
    function = {key: tool[key] for key in ("name", "description", "parameters", "strict")
                if tool.get(key) is not None}
    return {"type": "function", "function": function}


def _chat_tool_choice(choice: Any) -> Any:
    if choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function":
        return {"type": "function", "function": {"name": choice.get("name")}}
    if isinstance(choice, dict) and choice.get("type") == "allowed_tools":
        tools = [{"type": "function", "function": {"name": tool.get("name")}} for tool in choice.get("tools")
                 or [] if isinstance(tool, dict) and tool.get("type") == "function"]
        return {"type": "allowed_tools",
                "allowed_tools": {"mode": choice.get("mode", "auto"), "tools": tools}}
    return None  # a hosted tool's choice: its tool is not sent either


def _response_format(spec: Any) -> dict[str, Any] | None:
    if not isinstance(spec, dict) or spec.get("type") in (None, "text"):
        return None
    if spec["type"] == "json_schema":
        schema = {key: spec[key] for key in ("name", "schema", "strict", "description") if key in spec}
        return {"type": "json_schema", "json_schema": schema}
    if spec["type"] == "json_object":
        return {"type": "json_object"}
    raise invalid_request(f"'text.format.type' {spec['type']!r} is not supported (text, json_schema, "
                          "json_object).", param="text.format.type", code="invalid_value")


# ---------------------------------------------------------------------------------------------------------
# Chat Completions → Response


def response_shell(request: ResponsesRequest, response_id: str) -> dict[str, Any]:
    """The Response object before its output: the request's settings echoed as OpenAI echoes them."""
    shell: dict[str, Any] = {"id": response_id, "object": "response", "created_at": int(time.time()),
                             "status": "in_progress", "error": None, "incomplete_details": None,
                             "model": request.model, "output": [], "usage": None}
    for key, default in _ECHOED.items():
        value = request.body.get(key)
        shell[key] = default if value is None else value
    shell["store"] = request.store
    return shell


def finished(shell: dict[str, Any], output: list[dict[str, Any]], finish_reason: str | None,
             usage: dict[str, Any] | None) -> dict[str, Any]:
    """The Response once the model is done: its status follows the chat finish reason."""
    reason = _INCOMPLETE.get(finish_reason or "")
    return {**shell, "status": "incomplete" if reason else "completed",
            "incomplete_details": {"reason": reason} if reason else None, "output": output,
            "usage": responses_usage(usage)}


def responses_usage(usage: dict[str, Any] | None) -> dict[str, Any] | None:
    if not isinstance(usage, dict):
        return None
    prompt, completion = usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    reasoning = (usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0
    return {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": cached},
            "output_tokens": completion, "output_tokens_details": {"reasoning_tokens": reasoning},
            "total_tokens": prompt + completion}


def chat_usage(response: dict[str, Any]) -> dict[str, Any] | None:
    """A Response's usage in chat terms (for the upstream metrics of forwarded requests)."""
    usage = response.get("usage")
    if not isinstance(usage, dict):
        return None
    return {"prompt_tokens": usage.get("input_tokens") or 0,
            "completion_tokens": usage.get("output_tokens") or 0}


def reasoning_item(text: str, item_id: str | None = None) -> dict[str, Any]:
    return {"id": item_id or new_id("rs"), "type": "reasoning",
            "summary": [{"type": "summary_text", "text": text}] if text else []}


def message_item(text: str, item_id: str | None = None, status: str = "completed") -> dict[str, Any]:
    return {"id": item_id or new_id("msg"), "type": "message", "status": status, "role": "assistant",
            "content": [output_text_part(text)] if status == "completed" else []}


def output_text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def function_call_item(call: dict[str, Any], item_id: str | None = None,
                       status: str = "completed") -> dict[str, Any]:
    """A Chat Completions tool call as a `function_call` output item."""
    function = call.get("function") or {}
    return {"id": item_id or new_id("fc"), "type": "function_call", "status": status,
            "call_id": call.get("id") or new_id("call"), "name": function.get("name") or "",
            "arguments": function.get("arguments") or ""}


def output_items(reasoning: str | None, text: str | None,
                 tool_calls: list[dict[str, Any]] | tuple[dict[str, Any], ...]) -> list[dict[str, Any]]:
    output = [reasoning_item(reasoning)] if reasoning else []
    if text:
        output.append(message_item(text))
    output += [function_call_item(call) for call in tool_calls]
    return output


def response_from_completion(shell: dict[str, Any], completion: dict[str, Any]) -> dict[str, Any]:
    choices = completion.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = choice.get("message") or {}
    output = output_items(message.get("reasoning_content"), message.get("content"),
                          message.get("tool_calls") or [])
    return finished(shell, output, choice.get("finish_reason"), completion.get("usage"))
